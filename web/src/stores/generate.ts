// The image page's state: the form, the models and styles it offers, and the jobs it
// submitted with their live progress (from /api/events) and results.

import { createStore } from "zustand/vanilla";
import { ApiError, asApiError, type ApiClient } from "../api/client";
import type { Asset, FeedItem, Generation, ImageRequest, Model, Style } from "../api/types";

export interface GenerateForm {
  prompt: string;
  negative: string;
  model: string;
  /** `W:H`, or `image` to keep the reference image's size. */
  aspect: string;
  style: string;
  /** Numbers as typed; empty means the model's default. */
  steps: string;
  cfg: string;
  /** Empty or -1: random. */
  seed: string;
  /** Empty: the model's own scheduler. */
  scheduler: string;
  batch: number;
  init: Asset | null;
  strength: number;
  /** Generating from someone's feed item keeps the link to it. */
  remixOf: string | null;
  /** LoRAs to apply, in order, each with its weight. */
  loras: LoraUse[];
}

export interface LoraUse {
  id: string;
  weight: number;
}

/** Whether a LoRA can go on a model: the same base family, or either one not saying. */
export function loraFits(lora: Model, model: Model | undefined): boolean {
  return !lora.family || !model?.family || lora.family === model.family;
}

/** A generation as this page follows it: the server's view plus the latest preview. */
export interface Job extends Generation {
  preview: string | null;
}

export const SCHEDULERS = ["euler", "euler_a", "ddim", "dpmpp_2m", "dpmpp_2m_karras", "lcm", "pndm"] as const;

export const emptyForm: GenerateForm = {
  prompt: "",
  negative: "",
  model: "",
  aspect: "1:1",
  style: "none",
  steps: "",
  cfg: "",
  seed: "",
  scheduler: "",
  batch: 1,
  init: null,
  strength: 0.6,
  remixOf: null,
  loras: [],
};

export interface GenerateState {
  form: GenerateForm;
  models: Model[];
  /** Models of capability `lora`. */
  loras: Model[];
  styles: Style[];
  optionsLoaded: boolean;
  optionsError: ApiError | null;
  jobs: Record<string, Job>;
  /** Jobs submitted or opened on this page, newest first. */
  order: string[];
  /** The job the main view shows. */
  selected: string | null;
  submitting: boolean;
  uploading: boolean;
  /** Why the last submission was refused; `error.field` names the field at fault. */
  error: ApiError | null;

  loadOptions(): Promise<void>;
  set(patch: Partial<GenerateForm>): void;
  selectModel(id: string): void;
  randomizeSeed(): void;
  addLora(id: string): void;
  setLoraWeight(id: string, weight: number): void;
  removeLora(id: string): void;
  submit(): Promise<string | null>;
  applyEvent(kind: string, data: Record<string, unknown>): void;
  /** Re-reads active jobs (after the event stream reconnects: events may have been missed). */
  resync(): Promise<void>;
  open(g: Generation): void;
  select(id: string): void;
  cancel(id: string): Promise<void>;
  setPublic(id: string, value: boolean): Promise<void>;
  remove(id: string): Promise<void>;
  /** Drops generations deleted elsewhere (the dashboard, the feed). */
  forget(ids: string[]): void;
  /** Back to an empty page (after signing out). */
  reset(): void;
  /** Fills the form from a generation's parameters. */
  reuse(g: Generation): void;
  /** Fills the form from someone's image in the feed; generating then remixes it. */
  prefillRemix(item: FeedItem): void;
  uploadInit(file: Blob): Promise<void>;
}

const ORDER: Record<string, number> = { pending: 0, processing: 1, completed: 2, failed: 2, cancelled: 2 };

export function isActive(j: Pick<Generation, "status">): boolean {
  return j.status === "pending" || j.status === "processing";
}

/** Combines what is known of a job with something newer (an event, a poll) that may
 * arrive out of order: the status never goes back, nor does progress. */
export function mergeJob(old: Job | undefined, incoming: Partial<Job>): Job {
  const base = (old ?? { preview: null, images: [], progress: { step: 0, total: 0 } }) as Job;
  const next = { ...base, ...incoming } as Job;
  if (old && ORDER[incoming.status ?? old.status] < ORDER[old.status]) {
    // A snapshot from before the job ended (a read that crossed its `completed` event):
    // it neither moves the job back nor takes the images the event brought.
    next.status = old.status;
    next.images = old.images;
  }
  if (old && incoming.progress && incoming.progress.step < old.progress.step) next.progress = old.progress;
  if (!isActive(next)) next.queue_position = null;
  if (next.status === "completed") next.preview = null;
  return next;
}

function parseNumber(v: string, field: string, integer: boolean): number | undefined {
  const t = v.trim();
  if (t === "") return undefined;
  const n = Number(t);
  if (!Number.isFinite(n) || (integer && !Number.isInteger(n))) {
    throw new ApiError(0, "invalid-input", `${field}: must be ${integer ? "a whole number" : "a number"}`);
  }
  return n;
}

/** The API request a form describes; throws an `ApiError` naming the field for what the
 * server could not even be asked (an empty prompt, letters in a number). */
export function buildRequest(f: GenerateForm): ImageRequest {
  const prompt = f.prompt.trim();
  if (!prompt) throw new ApiError(0, "invalid-input", "prompt: write what you want to see");
  const req: ImageRequest = { prompt, batch_size: f.batch };
  if (f.negative.trim()) req.negative_prompt = f.negative.trim();
  if (f.model) req.model = f.model;
  if (!(f.init && f.aspect === "image")) req.aspect_ratio = f.aspect === "image" ? "1:1" : f.aspect;
  if (f.style && f.style !== "none") req.style = f.style;
  const steps = parseNumber(f.steps, "steps", true);
  if (steps !== undefined) req.steps = steps;
  const cfg = parseNumber(f.cfg, "cfg_scale", false);
  if (cfg !== undefined) req.cfg_scale = cfg;
  req.seed = parseNumber(f.seed, "seed", true) ?? -1;
  if (f.scheduler) req.scheduler = f.scheduler;
  if (f.init) {
    req.init_image = f.init.id;
    req.strength = f.strength;
  }
  if (f.loras.length) req.loras = f.loras.map((l) => ({ id: l.id, weight: l.weight }));
  return req;
}

function randomSeed(): number {
  return Math.floor(Math.random() * 2 ** 32);
}

function formFrom(g: Generation, models: Model[]): Partial<GenerateForm> {
  const known = models.some((m) => m.id === g.model);
  return {
    prompt: g.prompt,
    negative: g.negative_prompt ?? "",
    model: known ? g.model : (models[0]?.id ?? g.model),
    aspect: g.aspect_ratio ?? aspectOf(g, models.find((m) => m.id === g.model)),
    style: g.style ?? "none",
    steps: g.steps != null ? String(g.steps) : "",
    cfg: g.cfg_scale != null ? String(g.cfg_scale) : "",
    seed: String(g.seed),
    scheduler: g.scheduler ?? "",
    batch: 1,
    init: null,
    strength: g.strength ?? 0.6,
    remixOf: null,
    loras: (g.loras ?? []).map((l) => ({ id: l.id, weight: l.weight ?? 1 })),
  };
}

/** The preset whose size a generation has, else square. */
function aspectOf(g: Generation, m: Model | undefined): string {
  const hit = m?.aspect_ratios.find((a) => a.width === g.width && a.height === g.height);
  return hit?.ratio ?? "1:1";
}

export function createGenerateStore(
  api: ApiClient,
  hooks: {
    onCreditsChanged?: () => void;
    /** A job ended or was deleted (lists of generations follow). */
    onChanged?: (id: string, change: "ended" | "deleted") => void;
  } = {},
) {
  return createStore<GenerateState>()((set, get) => {
    const put = (id: string, patch: Partial<Job>) =>
      set((s) => ({ jobs: { ...s.jobs, [id]: mergeJob(s.jobs[id], patch) } }));

    return {
      form: { ...emptyForm },
      models: [],
      loras: [],
      styles: [],
      optionsLoaded: false,
      optionsError: null,
      jobs: {},
      order: [],
      selected: null,
      submitting: false,
      uploading: false,
      error: null,

      async loadOptions() {
        try {
          const [m, l, s] = await Promise.all([api.models("txt2img"), api.models("lora"), api.styles()]);
          set({ models: m.models, loras: l.models, styles: s.styles, optionsLoaded: true, optionsError: null });
          const f = get().form;
          if (!f.model || !m.models.some((x) => x.id === f.model)) {
            const pick = m.models.find((x) => x.installed) ?? m.models[0];
            if (pick) get().selectModel(pick.id);
          }
        } catch (e) {
          set({ optionsLoaded: true, optionsError: asApiError(e) });
        }
      },

      set(patch) {
        const s = get();
        // Editing a field clears the complaint about it.
        const clear = s.error && (s.error.field === null || Object.keys(patch).some((k) => fieldOf(k) === s.error?.field));
        set({ form: { ...s.form, ...patch }, error: clear ? null : s.error });
      },

      selectModel(id) {
        const m = get().models.find((x) => x.id === id);
        const f = get().form;
        const aspects = m?.aspect_ratios.map((a) => a.ratio) ?? [];
        get().set({
          model: id,
          steps: m?.default_steps != null ? String(m.default_steps) : "",
          cfg: m?.default_cfg != null ? String(m.default_cfg) : "",
          aspect: f.aspect === "image" || aspects.includes(f.aspect) ? f.aspect : (aspects[0] ?? "1:1"),
        });
      },

      randomizeSeed() {
        get().set({ seed: String(randomSeed()) });
      },

      addLora(id) {
        const f = get().form;
        if (f.loras.some((l) => l.id === id)) return;
        get().set({ loras: [...f.loras, { id, weight: 1 }] });
      },

      setLoraWeight(id, weight) {
        get().set({ loras: get().form.loras.map((l) => (l.id === id ? { ...l, weight } : l)) });
      },

      removeLora(id) {
        get().set({ loras: get().form.loras.filter((l) => l.id !== id) });
      },

      async submit() {
        const s = get();
        if (s.submitting) return null;
        let req: ImageRequest;
        try {
          req = buildRequest(s.form);
        } catch (e) {
          set({ error: asApiError(e) });
          return null;
        }
        set({ submitting: true, error: null });
        try {
          const key = globalThis.crypto?.randomUUID?.();
          const acc = s.form.remixOf ? await api.remix(s.form.remixOf, req) : await api.generate(req, key);
          put(acc.id, {
            id: acc.id,
            status: acc.status,
            prompt: req.prompt,
            model: req.model ?? "",
            queue_position: acc.queue_position,
            estimated_time: acc.estimated_time,
            batch_size: req.batch_size ?? 1,
            progress: { step: 0, total: req.steps ?? 0 },
            images: [],
            is_public: false,
          });
          set((st) => ({ order: [acc.id, ...st.order.filter((x) => x !== acc.id)], selected: acc.id, submitting: false }));
          hooks.onCreditsChanged?.();
          // The full view (parameters, the seed the server drew).
          api.generation(acc.id).then(
            (g) => put(g.id, g),
            // Best effort: events and resync keep the job current without it.
            () => {},
          );
          return acc.id;
        } catch (e) {
          set({ submitting: false, error: asApiError(e) });
          return null;
        }
      },

      applyEvent(kind, data) {
        const id = data.id as string | undefined;
        if (!id || !get().jobs[id]) return;
        const patch: Partial<Job> = {};
        if (typeof data.status === "string") patch.status = data.status as Job["status"];
        if (data.progress) patch.progress = data.progress as Job["progress"];
        if (typeof data.preview === "string") patch.preview = data.preview;
        if (Array.isArray(data.images)) patch.images = data.images as Job["images"];
        if (data.error) patch.error = data.error as Job["error"];
        if (kind === "completed") patch.status = "completed";
        if (kind === "failed") patch.status = "failed";
        if (kind === "cancelled") patch.status = "cancelled";
        if (kind === "started") patch.queue_position = 0;
        put(id, patch);
        if (kind === "completed" || kind === "failed" || kind === "cancelled") {
          if (kind !== "completed") hooks.onCreditsChanged?.();
          hooks.onChanged?.(id, "ended");
        }
      },

      async resync() {
        const active = Object.values(get().jobs).filter(isActive);
        await Promise.all(
          active.map((j) =>
            api.generation(j.id).then(
              (g) => {
                put(g.id, g);
                if (!isActive(g)) hooks.onChanged?.(g.id, "ended");
              },
              // The next resync (or event) tries again.
              () => {},
            ),
          ),
        );
      },

      open(g) {
        put(g.id, g);
        set((s) => ({ order: s.order.includes(g.id) ? s.order : [g.id, ...s.order], selected: g.id }));
      },

      select(id) {
        set({ selected: id });
      },

      async cancel(id) {
        const g = await api.cancel(id);
        put(id, g);
        hooks.onCreditsChanged?.();
      },

      async setPublic(id, value) {
        const g = await api.setPublic(id, value);
        put(id, { is_public: g.is_public });
      },

      async remove(id) {
        await api.remove(id);
        get().forget([id]);
        hooks.onChanged?.(id, "deleted");
      },

      forget(ids) {
        const gone = new Set(ids);
        set((s) => {
          const jobs = Object.fromEntries(Object.entries(s.jobs).filter(([k]) => !gone.has(k)));
          const order = s.order.filter((x) => !gone.has(x));
          return { jobs, order, selected: s.selected && gone.has(s.selected) ? (order[0] ?? null) : s.selected };
        });
      },

      reset() {
        set({ form: { ...emptyForm }, jobs: {}, order: [], selected: null, submitting: false, uploading: false, error: null });
        // The next user picks a model again.
        if (get().models.length) get().selectModel((get().models.find((m) => m.installed) ?? get().models[0]).id);
      },

      reuse(g) {
        set({ form: { ...get().form, ...formFrom(g, get().models) }, error: null });
      },

      prefillRemix(item) {
        // An image job's params are its request as checked: the fields a generation has.
        const g = { ...item.params, prompt: item.prompt ?? "" } as unknown as Generation;
        set({ form: { ...get().form, ...formFrom(g, get().models), remixOf: item.id }, error: null });
      },

      async uploadInit(file) {
        set({ uploading: true });
        try {
          const asset = await api.upload(file);
          const f = get().form;
          set({ uploading: false, form: { ...f, init: asset, aspect: f.init ? f.aspect : "image" } });
        } catch (e) {
          set({ uploading: false, error: asApiError(e) });
          throw e;
        }
      },
    };
  });
}

/** The request field a form key sends (errors name request fields). */
export function fieldOf(formKey: string): string {
  switch (formKey) {
    case "negative":
      return "negative_prompt";
    case "cfg":
      return "cfg_scale";
    case "aspect":
      return "aspect_ratio";
    case "batch":
      return "batch_size";
    case "init":
      return "init_image";
    default:
      return formKey;
  }
}
