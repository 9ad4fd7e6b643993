import { useEffect } from "react";
import { toasts, use } from "../app";

/** Notices fade 4 s after they appear (each on its own clock); errors stay until dismissed. */
const fading = new Set<number>();

export function Toasts() {
  const list = use(toasts, (s) => s.toasts);
  useEffect(() => {
    for (const t of list) {
      if (t.kind !== "info" || fading.has(t.id)) continue;
      fading.add(t.id);
      setTimeout(() => {
        fading.delete(t.id);
        toasts.getState().dismiss(t.id);
      }, 4000);
    }
  }, [list]);
  return (
    <div aria-live="polite" className="pointer-events-none fixed bottom-4 right-4 left-4 z-50 flex flex-col items-end gap-2 sm:left-auto">
      {list.map((t) => (
        <div
          key={t.id}
          role={t.kind === "error" ? "alert" : "status"}
          className={`pointer-events-auto flex max-w-md items-start gap-3 rounded-xl border px-4 py-3 text-sm shadow-2xl ${
            t.kind === "error" ? "border-red-900 bg-red-950 text-red-100" : "border-line bg-raised text-neutral-100"
          }`}
        >
          <span className="flex-1">{t.message}</span>
          <button type="button" aria-label="Dismiss" className="text-neutral-400 hover:text-white" onClick={() => toasts.getState().dismiss(t.id)}>
            ×
          </button>
        </div>
      ))}
    </div>
  );
}
