// The server's JSON shapes (docs/api.md; GET /api/openapi.json), as the studio uses them.

export interface User {
  id: string;
  email: string;
  name: string;
  handle: string;
  is_admin: boolean;
  credits_remaining: number;
  subscription_tier: string;
  created_at: number;
}

export interface Profile extends User {
  bio: string;
  avatar_url: string | null;
}

export interface Session {
  access_token: string;
  refresh_token: string;
  expires_in: number;
  user: User;
}

export interface AspectSize {
  ratio: string;
  width: number;
  height: number;
}

export interface Model {
  id: string;
  name: string;
  source: string;
  family: string | null;
  resolution: number | null;
  default_steps: number | null;
  default_cfg: number | null;
  fast: boolean;
  local: boolean;
  installed: boolean;
  aspect_ratios: AspectSize[];
}

export interface Style {
  id: string;
  name: string;
  prompt: string;
  negative: string;
}

export interface ImageRequest {
  prompt: string;
  negative_prompt?: string;
  model?: string;
  width?: number;
  height?: number;
  steps?: number;
  cfg_scale?: number;
  seed?: number;
  batch_size?: number;
  scheduler?: string;
  aspect_ratio?: string;
  style?: string;
  init_image?: string;
  strength?: number;
  mask?: string;
  is_public?: boolean;
}

export interface Accepted {
  id: string;
  status: GenerationStatus;
  estimated_time: number | null;
  queue_position: number | null;
}

export type GenerationStatus = "pending" | "processing" | "completed" | "failed" | "cancelled";

export interface ImageView {
  id: string;
  url: string;
  thumbnail_url: string;
  width: number;
  height: number;
  seed: number;
}

export interface Generation {
  id: string;
  status: GenerationStatus;
  prompt: string;
  negative_prompt: string | null;
  model: string;
  width: number | null;
  height: number | null;
  steps: number | null;
  cfg_scale: number | null;
  scheduler: string | null;
  style: string | null;
  aspect_ratio: string | null;
  strength: number | null;
  init_image: string | null;
  clip_skip: number;
  seed: number;
  batch_size: number;
  is_public: boolean;
  likes_count: number;
  remix_of: string | null;
  progress: { step: number; total: number };
  images: ImageView[];
  credits_used: number;
  error: { code: string; message: string } | null;
  queue_position: number | null;
  estimated_time: number | null;
  created_at: number;
  completed_at: number | null;
}

export interface Author {
  handle: string;
  name: string;
  avatar_url: string | null;
}

export interface FeedItem extends Generation {
  author: Author;
  liked: boolean;
}

export interface Page<T> {
  items: T[];
  next_cursor: string | null;
}

export interface PublicProfile extends Page<FeedItem> {
  handle: string;
  name: string;
  bio: string;
  avatar_url: string | null;
  created_at: number;
  public_generations: number;
  likes_received: number;
}

export interface Asset {
  id: string;
  mime: string;
  width: number;
  height: number;
  bytes: number;
  url: string;
}

export interface ApiKey {
  id: string;
  name: string;
  prefix: string;
  created_at: number;
  /** Only in the response that created it. */
  key?: string;
}

export interface Usage {
  credits_remaining: number;
  daily_allowance: number;
  credits_used_today: number;
  resets_at: number;
  tier: string;
  history: { day: number; credits_used: number; generations: number }[];
}

export interface ProfileUpdate {
  name?: string;
  handle?: string;
  bio?: string;
  avatar_url?: string;
}
