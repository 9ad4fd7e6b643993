// The LoRA picker of /image and /realtime: LoRAs for the chosen model's family (others
// listed as not fitting), each added once with a weight from -2 to 2.

import type { Model } from "../api/types";
import { loraFits, type LoraUse } from "../stores/generate";
import { Amount, Field, Select } from "./ui";

export function LoraPicker({
  loras,
  chosen,
  model,
  error = null,
  onAdd,
  onWeight,
  onRemove,
}: {
  loras: Model[];
  chosen: LoraUse[];
  model: Model | undefined;
  error?: string | null;
  onAdd: (id: string) => void;
  onWeight: (id: string, weight: number) => void;
  onRemove: (id: string) => void;
}) {
  if (loras.length === 0) return null;
  const free = loras.filter((l) => !chosen.some((c) => c.id === l.id));
  return (
    <div className="flex flex-col gap-2" data-testid="lora-field">
      <Field label="LoRAs" error={error} hint={model?.family ? `For ${model.family} models` : undefined}>
        {(id, d) => (
          <Select
            id={id}
            aria-describedby={d}
            value=""
            onChange={(e) => {
              if (e.target.value) onAdd(e.target.value);
            }}
          >
            <option value="">Add a LoRA…</option>
            {free.map((l) => (
              <option key={l.id} value={l.id} disabled={!loraFits(l, model)}>
                {l.name}
                {l.family ? ` (${l.family})` : ""}
                {loraFits(l, model) ? "" : " — another base"}
              </option>
            ))}
          </Select>
        )}
      </Field>
      {chosen.map((c) => {
        const l = loras.find((x) => x.id === c.id);
        return (
          <div key={c.id} className="flex items-end gap-2 rounded-lg border border-line p-2" data-testid={`lora-${c.id}`}>
            <div className="flex-1">
              <Amount label={l?.name ?? c.id} value={c.weight} min={-2} max={2} step={0.05} onChange={(v) => onWeight(c.id, v)} testId={`lora-weight-${c.id}`} />
            </div>
            <button type="button" className="h-8 rounded-lg px-2 text-sm text-muted hover:text-white" aria-label={`Remove ${l?.name ?? c.id}`} onClick={() => onRemove(c.id)}>
              ×
            </button>
          </div>
        );
      })}
    </div>
  );
}
