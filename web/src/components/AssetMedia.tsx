// An asset of any kind as the gallery shows it: an image, a playable video, or its kind
// and a link for kinds a browser cannot show inline (meshes, LoRAs, datasets).

import type { Asset } from "../api/types";

export function AssetMedia({ asset, alt, thumbnail = false, className = "" }: { asset: Asset | undefined; alt: string; thumbnail?: boolean; className?: string }) {
  if (!asset) return <div className={`aspect-square ${className}`} />;
  if (asset.kind === "image" || asset.kind === "mask") {
    const src = thumbnail ? (asset.thumbnail_url ?? asset.url) : asset.url;
    return <img src={src} alt={alt} width={asset.width ?? undefined} height={asset.height ?? undefined} className={`pixelated ${className}`} loading="lazy" />;
  }
  if (asset.kind === "video") {
    return <video src={asset.url} poster={asset.thumbnail_url ?? undefined} aria-label={alt} className={className} muted loop playsInline controls={!thumbnail} preload="metadata" />;
  }
  return (
    <a href={asset.url} className={`grid place-items-center text-sm text-muted ${className}`} download>
      {asset.kind} · {Math.max(1, Math.round(asset.bytes / 1024))} KB
    </a>
  );
}
