// Every job the studio hears of, whatever its kind: its latest state from the event stream
// (status, progress, preview), and the tools that want each kind's events. A tool listens
// to its own kind (the image tool's generate store listens to "image"); nothing here knows
// any kind, so a new tool needs no change in this store.

import { createStore } from "zustand/vanilla";
import type { GenerationStatus } from "../api/types";

export interface JobState {
  id: string;
  kind: string;
  status: GenerationStatus;
  progress: { step: number; total: number };
  /** The latest step's preview (a data URL), until the job ends. */
  preview: string | null;
  /** What the job is doing before its steps, when it says (`"Downloading gfpgan-1.4"`,
   * its progress then counted in MB); null during the steps themselves. */
  stage: string | null;
}

export type JobListener = (event: string, data: Record<string, unknown>) => void;

export interface JobsState {
  jobs: Record<string, JobState>;
  /** An event from the stream (`data.kind` names the job's kind). */
  applyEvent(event: string, data: Record<string, unknown>): void;
  /** Hears every event of jobs of `kind`; returns the unsubscribe. */
  listen(kind: string, l: JobListener): () => void;
  reset(): void;
}

const ORDER: Record<string, number> = { pending: 0, processing: 1, completed: 2, failed: 2, cancelled: 2 };
/** The status an event means by itself (a progress event says it in `data.status`). */
const STATUS_OF: Record<string, GenerationStatus> = { completed: "completed", failed: "failed", cancelled: "cancelled", started: "processing", queued: "pending" };

export function createJobsStore() {
  const listeners = new Map<string, Set<JobListener>>();
  return createStore<JobsState>()((set, get) => ({
    jobs: {},
    applyEvent(event, data) {
      const id = data.id as string | undefined;
      const kind = data.kind as string | undefined;
      if (!id || !kind) return;
      const old = get().jobs[id];
      const status = (STATUS_OF[event] ?? (data.status as GenerationStatus | undefined) ?? old?.status ?? "pending") as GenerationStatus;
      const progress = (data.progress as JobState["progress"] | undefined) ?? old?.progress ?? { step: 0, total: 0 };
      // A progress event names its stage (none: the job's own steps); others keep it.
      const stage = event === "progress" ? (typeof data.stage === "string" ? data.stage : null) : (old?.stage ?? null);
      const next: JobState = {
        id,
        kind,
        // Events may arrive out of order: a status never goes back, nor does progress
        // within a stage (a new stage counts from its own start).
        status: old && ORDER[status] < ORDER[old.status] ? old.status : status,
        progress: old && old.stage === stage && progress.step < old.progress.step ? old.progress : progress,
        preview: typeof data.preview === "string" ? data.preview : (old?.preview ?? null),
        stage,
      };
      if (ORDER[next.status] === 2) next.preview = null;
      set({ jobs: { ...get().jobs, [id]: next } });
      listeners.get(kind)?.forEach((l) => l(event, data));
    },
    listen(kind, l) {
      const subs = listeners.get(kind) ?? new Set();
      subs.add(l);
      listeners.set(kind, subs);
      return () => subs.delete(l);
    },
    reset() {
      set({ jobs: {} });
    },
  }));
}
