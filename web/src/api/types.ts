// The server's JSON shapes, as the studio uses them: generated ones (schema.ts, from the
// server's OpenAPI document; `npm run api-types`), under the names the studio uses, with
// the status strings narrowed to what the server sends.
import type * as S from "./schema";

export type GenerationStatus = "pending" | "processing" | "completed" | "failed" | "cancelled";

type WithStatus<T> = Omit<T, "status"> & { status: GenerationStatus };

export type User = S.User;
export type Profile = S.Profile;
export type Session = S.Session;
export type AspectSize = S.AspectSize;
export type Model = S.Model;
export type Capability = S.Capability;
export type Style = S.Style;
export type ImageRequest = S.ImageRequest;
export type Accepted = WithStatus<S.Accepted>;
export type ImageView = S.ImageView;
export type Generation = WithStatus<S.GenerationView>;
export type Author = S.Author;
export type FeedItem = S.FeedItem;
export type PublicProfile = Omit<S.PublicProfile, "items"> & { items: FeedItem[] };
export type Asset = S.AssetView;
export type Versions = S.Versions;
export type ApiKey = S.ApiKeyView & { key?: string };
export type Usage = S.Usage;
export type ProfileUpdate = S.ProfileUpdate;
export type Job = S.JobView;
export type EnhanceRequest = S.EnhanceRequest;
export type EditRequest = S.EditRequest;
export type SegmentRequest = S.SegmentRequest;
export type SegmentResult = S.SegmentResult;
export type TileInfo = S.TileInfo;
export type Progress = S.Progress;
export type Account = S.AccountView;
export type ReportedItem = Omit<S.ReportedItem, "item"> & { item: FeedItem };
export type TrainRequest = S.TrainRequest;
export type Preset = S.Preset;
export type Training = Omit<S.TrainingView, "status"> & { status: GenerationStatus };
export type ReportList = { items: ReportedItem[] };

export interface Page<T> {
  items: T[];
  next_cursor?: string | null;
}
