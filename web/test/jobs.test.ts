import { describe, expect, it } from "vitest";
import { createJobsStore } from "../src/stores/jobs";
import { TOOLS, toolAt } from "../src/tools";

describe("the jobs store", () => {
  it("keeps every kind's latest state and hands each tool its own kind's events", () => {
    const jobs = createJobsStore();
    const heard: string[] = [];
    const stop = jobs.getState().listen("echo", (event, data) => heard.push(`${event}:${data.id}`));
    const apply = jobs.getState().applyEvent;
    apply("queued", { id: "e1", kind: "echo", status: "pending" });
    apply("started", { id: "e1", kind: "echo", status: "processing" });
    apply("progress", { id: "e1", kind: "echo", status: "processing", progress: { step: 2, total: 5 }, preview: "data:image/jpeg;base64,x" });
    apply("progress", { id: "i1", kind: "image", status: "processing", progress: { step: 1, total: 4 } });
    // Out of order: an older progress after a newer one changes nothing.
    apply("progress", { id: "e1", kind: "echo", status: "processing", progress: { step: 1, total: 5 } });
    expect(jobs.getState().jobs.e1).toEqual({ id: "e1", kind: "echo", status: "processing", progress: { step: 2, total: 5 }, preview: "data:image/jpeg;base64,x", stage: null });
    apply("completed", { id: "e1", kind: "echo", status: "completed", outputs: [] });
    apply("started", { id: "e1", kind: "echo", status: "processing" });
    expect(jobs.getState().jobs.e1.status).toBe("completed");
    expect(jobs.getState().jobs.e1.preview).toBeNull();
    expect(jobs.getState().jobs.i1.kind).toBe("image");
    expect(heard).toEqual(["queued:e1", "started:e1", "progress:e1", "progress:e1", "completed:e1", "started:e1"]);
    stop();
    apply("queued", { id: "e2", kind: "echo" });
    expect(heard).toHaveLength(6);
    // Events without a kind (older servers) are not a job's.
    apply("progress", { id: "x" });
    expect(jobs.getState().jobs.x).toBeUndefined();
  });

  it("counts a stage before the steps from its own start", () => {
    const jobs = createJobsStore();
    const apply = jobs.getState().applyEvent;
    apply("started", { id: "u1", kind: "enhance", status: "processing" });
    apply("progress", { id: "u1", kind: "enhance", status: "processing", progress: { step: 40, total: 67 }, stage: "Downloading realesrgan-x4plus" });
    expect(jobs.getState().jobs.u1.stage).toBe("Downloading realesrgan-x4plus");
    // The tiles start at 1: a new stage, not progress going back.
    apply("progress", { id: "u1", kind: "enhance", status: "processing", progress: { step: 1, total: 9 } });
    expect(jobs.getState().jobs.u1).toMatchObject({ stage: null, progress: { step: 1, total: 9 } });
    // Within the steps, an older event still changes nothing.
    apply("progress", { id: "u1", kind: "enhance", status: "processing", progress: { step: 3, total: 9 } });
    apply("progress", { id: "u1", kind: "enhance", status: "processing", progress: { step: 2, total: 9 } });
    expect(jobs.getState().jobs.u1.progress.step).toBe(3);
  });
});

describe("the tools registry", () => {
  it("gives each tool one route and a menu entry", () => {
    const paths = TOOLS.map((t) => t.path);
    expect(new Set(paths).size).toBe(paths.length);
    for (const t of TOOLS) {
      expect(t.path.startsWith("/")).toBe(true);
      expect(toolAt(t.path)).toBe(t);
      expect(["generate", "tools"]).toContain(t.menu);
    }
    expect(toolAt("/feed")).toBeUndefined();
  });
});
