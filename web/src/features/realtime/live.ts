// Live layers: a webcam (MediaDevices) or a shared screen (Screen Capture API) playing in a
// hidden <video> that the canvas draws every frame.

const videos = new Map<string, HTMLVideoElement>();

export function liveVideo(layerId: string): HTMLVideoElement | null {
  return videos.get(layerId) ?? null;
}

/** Asks the browser for the camera or a screen; resolves when the video plays. `wanted`
 * says whether the layer still exists once the user has answered the browser's prompt. */
export async function startLive(layerId: string, kind: "webcam" | "screen", wanted: () => boolean): Promise<void> {
  const md = navigator.mediaDevices;
  if (!md) throw new Error("this browser gives no access to cameras or screens here (it needs https or localhost)");
  const stream =
    kind === "webcam"
      ? await md.getUserMedia({ video: { width: 640, height: 480 }, audio: false })
      : await md.getDisplayMedia({ video: true, audio: false });
  const stop = () => stream.getTracks().forEach((t) => t.stop());
  if (!wanted()) return stop();
  const video = document.createElement("video");
  video.muted = true;
  video.playsInline = true;
  video.srcObject = stream;
  try {
    await video.play();
  } catch (e) {
    stop();
    throw e;
  }
  if (!wanted()) return stop();
  videos.set(layerId, video);
  // The user can end a screen share from the browser's own bar.
  stream.getVideoTracks()[0]?.addEventListener("ended", () => stopLive(layerId));
}

/** Stops every live layer not among `keep` (a layer undone, the page left). */
export function stopLiveExcept(keep: Set<string>) {
  for (const id of videos.keys()) if (!keep.has(id)) stopLive(id);
}

export function stopLive(layerId: string) {
  const v = videos.get(layerId);
  if (!v) return;
  (v.srcObject as MediaStream | null)?.getTracks().forEach((t) => t.stop());
  v.srcObject = null;
  videos.delete(layerId);
}
