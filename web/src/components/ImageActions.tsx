// What one can do with one's own generation: make it public or private, reuse its
// parameters, delete it. Failures are shown, never dropped.

import { useState } from "react";
import type { Generation } from "../api/types";
import { toasts } from "../app";
import { Button, Confirm } from "./ui";

export function ImageActions({
  generation,
  onReuse,
  onTogglePublic,
  onDelete,
}: {
  generation: Pick<Generation, "id" | "is_public" | "prompt">;
  /** Absent where its parameters cannot fill a form. */
  onReuse?: () => void;
  onTogglePublic: (value: boolean) => Promise<void>;
  onDelete: () => Promise<void>;
}) {
  const [busy, setBusy] = useState<"public" | "delete" | null>(null);
  const [confirming, setConfirming] = useState(false);
  const run = async (what: "public" | "delete", f: () => Promise<void>, label: string) => {
    setBusy(what);
    try {
      await f();
    } catch (e) {
      toasts.getState().error(e, label);
    } finally {
      setBusy(null);
    }
  };
  return (
    <div className="flex flex-wrap gap-2">
      <Button
        size="sm"
        aria-pressed={generation.is_public}
        disabled={busy !== null}
        data-testid="toggle-public"
        onClick={() =>
          run(
            "public",
            async () => {
              await onTogglePublic(!generation.is_public);
              toasts.getState().push("info", generation.is_public ? "Now private" : "Shared in the gallery");
            },
            "Cannot change who sees it",
          )
        }
      >
        {generation.is_public ? "● Public" : "○ Private"}
        <span className="text-muted">· {generation.is_public ? "make private" : "make public"}</span>
      </Button>
      {onReuse && (
        <Button size="sm" onClick={onReuse} title="Fill the form with these parameters">
          Reuse parameters
        </Button>
      )}
      <Button size="sm" variant="ghost" disabled={busy !== null} onClick={() => setConfirming(true)}>
        Delete
      </Button>
      {confirming && (
        <Confirm
          title="Delete this generation?"
          body="Its images are removed for good, also from the gallery."
          confirm="Delete"
          onCancel={() => setConfirming(false)}
          onConfirm={() => {
            setConfirming(false);
            void run("delete", onDelete, "Cannot delete");
          }}
        />
      )}
    </div>
  );
}
