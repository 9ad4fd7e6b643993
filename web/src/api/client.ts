// The API client: one place that turns HTTP into values or `ApiError`s, and keeps the
// browser signed in. Tokens live only in HttpOnly cookies; when an access token expires
// (401), the client refreshes the session once (the refresh cookie) and retries.

import type {
  Accepted,
  Account,
  ApiKey,
  Asset,
  EnhanceRequest,
  EditRequest,
  SegmentRequest,
  SegmentResult,
  FeedItem,
  Generation,
  ImageRequest,
  Job,
  Model,
  Page,
  Profile,
  ProfileUpdate,
  PublicProfile,
  ReportList,
  Session,
  Style,
  TileInfo,
  TrainRequest,
  Training,
  Usage,
  User,
  Versions,
} from "./types";

/** An error the user can be shown: the server's `{error: {code, message}}`, or why the
 * server could not be reached. `field` is the request field at fault, when the message
 * names one (`"steps: must be from 1 to 150"`). */
export class ApiError extends Error {
  readonly status: number;
  readonly code: string;
  readonly field: string | null;
  readonly retryAfter: number | null;

  constructor(status: number, code: string, message: string, retryAfter: number | null = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
    const m = /^([A-Za-z_][A-Za-z0-9_.[\]-]*): /.exec(message);
    this.field = m ? m[1] : null;
  }

  /** The message without its field prefix, for display next to that field. */
  get detail(): string {
    return this.field ? this.message.slice(this.field.length + 2) : this.message;
  }
}

/** Anything thrown, as an ApiError (so every failure has a message to show). */
export function asApiError(e: unknown): ApiError {
  if (e instanceof ApiError) return e;
  if (e instanceof DOMException && e.name === "AbortError") return new ApiError(0, "aborted", "cancelled");
  return new ApiError(0, "client", e instanceof Error ? e.message : String(e));
}

type Query = Record<string, string | number | boolean | null | undefined>;

export interface RequestOptions {
  query?: Query;
  json?: unknown;
  body?: BodyInit;
  headers?: Record<string, string>;
  signal?: AbortSignal;
}

export type Fetch = (input: string, init?: RequestInit) => Promise<Response>;

export type RefreshResult = "ok" | "refused" | "unreachable";

/** Where a 401 is the answer itself, not an expired session. */
const NO_REFRESH = ["/api/auth/login", "/api/auth/register", "/api/auth/setup", "/api/auth/refresh", "/api/auth/logout"];

/** Runs `fn` while holding a lock shared by every tab of this site (Web Locks), so two
 * tabs never spend the same single-use refresh token. */
export type LockFn = <T>(name: string, fn: () => Promise<T>) => Promise<T>;

const browserLock: LockFn | undefined =
  typeof navigator !== "undefined" && navigator.locks
    ? (name, fn) => navigator.locks.request(name, fn)
    : undefined;

export interface ClientOptions {
  base?: string;
  fetch?: Fetch;
  lock?: LockFn;
  /** Called when the session is gone for good (refresh refused). */
  onSignedOut?: () => void;
}

function withQuery(path: string, q?: Query): string {
  if (!q) return path;
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(q)) if (v !== undefined && v !== null && v !== "") p.set(k, String(v));
  const s = p.toString();
  return s ? `${path}?${s}` : path;
}

async function errorFrom(r: Response): Promise<ApiError> {
  const retry = Number(r.headers.get("retry-after"));
  const retryAfter = Number.isFinite(retry) && retry > 0 ? retry : null;
  try {
    const body = await r.json();
    if (body && typeof body.error?.code === "string") {
      return new ApiError(r.status, body.error.code, String(body.error.message ?? r.statusText), retryAfter);
    }
  } catch {
    // Not JSON: a proxy's page, say.
  }
  return new ApiError(r.status, `http-${r.status}`, `the server answered ${r.status} ${r.statusText}`.trim(), retryAfter);
}

export class ApiClient {
  private readonly base: string;
  private readonly fetchFn: Fetch;
  private readonly lock?: LockFn;
  onSignedOut?: () => void;
  private refreshing: Promise<RefreshResult> | null = null;

  constructor(o: ClientOptions = {}) {
    this.base = o.base ?? "";
    this.fetchFn = o.fetch ?? ((i, init) => fetch(i, init));
    this.lock = o.lock ?? browserLock;
    this.onSignedOut = o.onSignedOut;
  }

  /** One request; JSON in and out. A 401 refreshes the session once and retries (except
   * for signing in, out and the refresh itself: there a 401 is the answer). */
  async request<T>(method: string, path: string, o: RequestOptions = {}): Promise<T> {
    let r = await this.send(method, path, o);
    if (r.status === 401 && !NO_REFRESH.includes(path)) {
      const renewed = await this.refresh();
      // Also after a refused refresh: another tab may have renewed the cookies meanwhile.
      if (renewed !== "unreachable") r = await this.send(method, path, o);
      if (r.status === 401 && renewed === "refused") this.onSignedOut?.();
    }
    if (!r.ok) throw await errorFrom(r);
    if (r.status === 204) return undefined as T;
    const text = await r.text();
    if (!text) return undefined as T;
    try {
      return JSON.parse(text) as T;
    } catch {
      throw new ApiError(r.status, "bad-response", "the server sent something that is not JSON");
    }
  }

  private async send(method: string, path: string, o: RequestOptions): Promise<Response> {
    const headers: Record<string, string> = { ...o.headers };
    let body = o.body;
    if (o.json !== undefined) {
      headers["content-type"] = "application/json";
      body = JSON.stringify(o.json);
    }
    try {
      return await this.fetchFn(this.base + withQuery(path, o.query), {
        method,
        headers,
        body,
        signal: o.signal,
        credentials: "same-origin",
      });
    } catch (e) {
      if (e instanceof DOMException && e.name === "AbortError") throw e;
      throw new ApiError(0, "network", "cannot reach the Krya server; check that it is running");
    }
  }

  /** Renews the session from the refresh cookie: "ok" when signed in afterwards,
   * "refused" when the server says the session is over, "unreachable" when it could not
   * say (offline, overloaded: not a reason to sign out). One refresh at a time in this
   * tab, and across tabs under a shared lock where the browser has one: a tab that waited
   * finds the session already renewed and does not spend the (new) token again. */
  refresh(): Promise<RefreshResult> {
    this.refreshing ??= (async () => {
      const signedIn = async () => (await this.send("GET", "/api/auth/me", {}).catch(() => null))?.ok ?? false;
      const attempt = async (): Promise<RefreshResult> => {
        if (await signedIn()) return "ok";
        const r = await this.send("POST", "/api/auth/refresh", {}).catch(() => null);
        if (r?.ok) return "ok";
        if (r?.status !== 401) return "unreachable";
        // Refused: perhaps because another tab spent the token a moment ago.
        return (await signedIn()) ? "ok" : "refused";
      };
      try {
        return this.lock ? await this.lock("krya-refresh", attempt) : await attempt();
      } finally {
        this.refreshing = null;
      }
    })();
    return this.refreshing;
  }

  // Accounts
  me = () => this.request<User>("GET", "/api/auth/me");
  /** Who this is, for a guest too (never a 401, which browsers log). */
  session = () => this.request<{ user: User | null; refreshable: boolean }>("GET", "/api/auth/session");
  login = (email: string, password: string) => this.request<Session>("POST", "/api/auth/login", { json: { email, password } });
  register = (email: string, password: string, name: string, invite?: string) =>
    this.request<Session>("POST", "/api/auth/register", { json: { email, password, name, ...(invite ? { invite } : {}) } });
  /** The first administrator, with the token of the setup link the server logged. */
  setup = (token: string, email: string, password: string, name: string) =>
    this.request<Session>("POST", "/api/auth/setup", { json: { token, email, password, name } });
  registration = () => this.request<{ registration: "open" | "invite" | "closed"; setup_pending: boolean }>("GET", "/api/auth/registration");
  logout = () => this.request<void>("POST", "/api/auth/logout");
  profile = () => this.request<Profile>("GET", "/api/user/profile");
  updateProfile = (p: ProfileUpdate) => this.request<Profile>("PUT", "/api/user/profile", { json: p });
  apiKeys = () => this.request<{ items: ApiKey[] }>("GET", "/api/user/api-keys");
  createApiKey = (name: string) => this.request<ApiKey>("POST", "/api/user/api-keys", { json: { name } });
  revokeApiKey = (id: string) => this.request<void>("DELETE", `/api/user/api-keys/${encodeURIComponent(id)}`);
  usage = () => this.request<Usage>("GET", "/api/user/usage");

  // Generation
  models = (capability?: string) => this.request<{ models: Model[] }>("GET", "/api/models", { query: { capability } });
  styles = () => this.request<{ styles: Style[] }>("GET", "/api/styles");
  generate = (req: ImageRequest, idempotencyKey?: string) =>
    this.request<Accepted>("POST", "/api/generate/image", {
      json: req,
      headers: idempotencyKey ? { "idempotency-key": idempotencyKey } : undefined,
    });
  generation = (id: string) => this.request<Generation>("GET", `/api/generate/image/${encodeURIComponent(id)}`);
  generations = (q: { cursor?: string | null; limit?: number; model?: string; q?: string; status?: string } = {}) =>
    this.request<Page<Generation>>("GET", "/api/generate/images", { query: q });
  cancel = (id: string) => this.request<Generation>("POST", `/api/generate/image/${encodeURIComponent(id)}/cancel`);
  remove = (id: string) => this.request<void>("DELETE", `/api/generate/image/${encodeURIComponent(id)}`);
  setPublic = (id: string, is_public: boolean) =>
    this.request<Generation>("PATCH", `/api/generate/image/${encodeURIComponent(id)}`, { json: { is_public } });
  // Jobs of any kind
  jobs = (q: { cursor?: string | null; limit?: number; kind?: string; model?: string; q?: string; status?: string } = {}) =>
    this.request<Page<Job>>("GET", "/api/jobs", { query: q });
  jobKinds = () => this.request<{ kinds: string[] }>("GET", "/api/jobs/kinds");
  setJobPublic = (id: string, is_public: boolean) => this.request<Job>("PATCH", `/api/jobs/${encodeURIComponent(id)}`, { json: { is_public } });
  removeJob = (id: string) => this.request<void>("DELETE", `/api/jobs/${encodeURIComponent(id)}`);
  upload = (file: Blob) =>
    this.request<Asset>("POST", "/api/assets", {
      body: file,
      headers: { "content-type": file.type || "application/octet-stream" },
    });

  /** Saves a live-canvas frame (uploaded first) as a generation. */
  saveCapture = (c: { image: string; prompt: string; model: string; seed: number; strength: number; steps: number }) =>
    this.request<Generation>("POST", "/api/realtime/captures", { json: c });

  // Feed
  feed = (q: { sort?: "new" | "top"; cursor?: string | null; limit?: number; q?: string } = {}) =>
    this.request<Page<FeedItem>>("GET", "/api/feed", { query: q });
  feedItem = (id: string) => this.request<FeedItem>("GET", `/api/feed/${encodeURIComponent(id)}`);
  like = (id: string) => this.request<{ liked: boolean; likes_count: number }>("POST", `/api/feed/${encodeURIComponent(id)}/like`);
  remix = (id: string, overrides: object) =>
    this.request<Accepted>("POST", `/api/feed/${encodeURIComponent(id)}/remix`, { json: overrides });
  publicProfile = (handle: string, cursor?: string | null) =>
    this.request<PublicProfile>("GET", `/api/profiles/${encodeURIComponent(handle)}`, { query: { cursor } });
  enhance = (req: EnhanceRequest) => this.request<Job>("POST", "/api/enhance/image", { json: req });
  enhanceJob = (id: string) => this.request<Job>("GET", `/api/enhance/${encodeURIComponent(id)}`);
  versions = (assetId: string) => this.request<Versions>("GET", `/api/assets/${encodeURIComponent(assetId)}/versions`);
  edit = (req: EditRequest) => this.request<Job>("POST", "/api/edit/image", { json: req });
  editJob = (id: string) => this.request<Job>("GET", `/api/edit/${encodeURIComponent(id)}`);
  cancelJob = (id: string) => this.request<Job>("POST", `/api/jobs/${encodeURIComponent(id)}/cancel`);
  /** Captions an uploaded image (BLIP): a job whose output is the caption as text. */
  caption = (image: string) => this.request<Job>("POST", "/api/caption", { json: { image } });
  captionJob = (id: string) => this.request<Job>("GET", `/api/caption/${encodeURIComponent(id)}`);
  /** The caption text of a completed caption job. */
  captionText = async (url: string) => {
    const r = await this.send("GET", url, {});
    if (!r.ok) throw await errorFrom(r);
    return r.text();
  };
  train = (req: TrainRequest) => this.request<Job>("POST", "/api/train/model", { json: req });
  training = (id: string) => this.request<Training>("GET", `/api/train/model/${encodeURIComponent(id)}`);
  trainings = (cursor?: string | null) => this.request<Page<Job>>("GET", "/api/train/models", { query: { cursor } });
  /** A mask for clicks (and a box) on an image (Segment Anything). */
  segment = (req: SegmentRequest) => this.request<SegmentResult>("POST", "/api/segment", { json: req });
  /** The shape of an output's tile pyramid (404 when it has none). */
  assetTiles = (id: string) => this.request<TileInfo>("GET", `/api/assets/${encodeURIComponent(id)}/tiles`);
  report = (id: string, reason: string) => this.request<{ id: string; new: boolean }>("POST", `/api/feed/${encodeURIComponent(id)}/report`, { json: { reason } });

  // Administration
  reports = () => this.request<ReportList>("GET", "/api/admin/reports");
  moderate = (id: string, hidden: boolean) => this.request<{ id: string; hidden: boolean; is_public: boolean }>("PATCH", `/api/admin/jobs/${encodeURIComponent(id)}`, { json: { hidden } });
  dismissReports = (id: string) => this.request<void>("DELETE", `/api/admin/jobs/${encodeURIComponent(id)}/reports`);
  removeAnyJob = (id: string) => this.request<void>("DELETE", `/api/admin/jobs/${encodeURIComponent(id)}`);
  accounts = (q?: string) => this.request<{ users: Account[] }>("GET", "/api/admin/users", { query: { q } });
  suspend = (id: string, suspended: boolean) => this.request<Account>("PATCH", `/api/admin/users/${encodeURIComponent(id)}`, { json: { suspended } });
}
