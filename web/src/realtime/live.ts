// Live layers: a webcam (MediaDevices) or a shared screen (Screen Capture API) playing in a
// hidden <video> that the canvas draws every frame.

const videos = new Map<string, HTMLVideoElement>();

export function liveVideo(layerId: string): HTMLVideoElement | null {
  return videos.get(layerId) ?? null;
}

/** Asks the browser for the camera or a screen; resolves when the video plays. */
export async function startLive(layerId: string, kind: "webcam" | "screen"): Promise<void> {
  const md = navigator.mediaDevices;
  if (!md) throw new Error("this browser gives no access to cameras or screens here (it needs https or localhost)");
  const stream =
    kind === "webcam"
      ? await md.getUserMedia({ video: { width: 640, height: 480 }, audio: false })
      : await md.getDisplayMedia({ video: true, audio: false });
  const video = document.createElement("video");
  video.muted = true;
  video.playsInline = true;
  video.srcObject = stream;
  await video.play();
  videos.set(layerId, video);
  // The user can end a screen share from the browser's own bar.
  stream.getVideoTracks()[0]?.addEventListener("ended", () => stopLive(layerId));
}

export function stopLive(layerId: string) {
  const v = videos.get(layerId);
  if (!v) return;
  (v.srcObject as MediaStream | null)?.getTracks().forEach((t) => t.stop());
  v.srcObject = null;
  videos.delete(layerId);
}
