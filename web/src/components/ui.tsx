// The studio's building blocks: buttons, fields that show their error, menus, skeletons.

import {
  useEffect,
  useId,
  useRef,
  useState,
  type ButtonHTMLAttributes,
  type InputHTMLAttributes,
  type ReactNode,
  type SelectHTMLAttributes,
  type TextareaHTMLAttributes,
} from "react";

type Variant = "primary" | "secondary" | "ghost" | "danger";

const variants: Record<Variant, string> = {
  primary: "brand-gradient text-neutral-950 font-semibold hover:brightness-110 disabled:opacity-50",
  secondary: "bg-raised border border-line text-neutral-100 hover:bg-neutral-800 disabled:opacity-50",
  ghost: "text-neutral-300 hover:bg-neutral-800 hover:text-white disabled:opacity-50",
  danger: "bg-red-600/90 text-white hover:bg-red-500 disabled:opacity-50",
};

export function Button({
  variant = "secondary",
  size = "md",
  className = "",
  ...rest
}: ButtonHTMLAttributes<HTMLButtonElement> & { variant?: Variant; size?: "sm" | "md" | "lg" }) {
  const sizes = { sm: "h-8 px-3 text-sm", md: "h-10 px-4 text-sm", lg: "h-12 px-6 text-base" };
  return (
    <button
      type="button"
      {...rest}
      className={`inline-flex items-center justify-center gap-2 rounded-lg transition ${sizes[size]} ${variants[variant]} ${className}`}
    />
  );
}

/** A labelled control with its error underneath (tied to it for screen readers). */
export function Field({
  label,
  error,
  hint,
  children,
  className = "",
}: {
  label: ReactNode;
  error?: string | null;
  hint?: ReactNode;
  children: (id: string, describedBy: string | undefined) => ReactNode;
  className?: string;
}) {
  const id = useId();
  const errId = `${id}-error`;
  return (
    <div className={`flex flex-col gap-1.5 ${className}`}>
      <label htmlFor={id} className="text-xs font-medium uppercase tracking-wide text-muted">
        {label}
      </label>
      {children(id, error ? errId : undefined)}
      {error ? (
        <FieldError id={errId}>{error}</FieldError>
      ) : hint ? (
        <p className="text-xs text-muted">{hint}</p>
      ) : null}
    </div>
  );
}

/** A field's error (nothing when there is none). */
export function FieldError({ children, id, className = "" }: { children: ReactNode; id?: string; className?: string }) {
  if (!children) return null;
  return (
    <p id={id} role="alert" className={`text-sm text-red-400 ${className}`} data-field-error>
      {children}
    </p>
  );
}

const control =
  "w-full rounded-lg border border-line bg-surface px-3 text-sm text-neutral-100 placeholder:text-neutral-500 focus:border-accent focus:outline-none aria-[invalid=true]:border-red-500";

export function Input(props: InputHTMLAttributes<HTMLInputElement>) {
  return <input {...props} className={`h-10 ${control} ${props.className ?? ""}`} />;
}

export function Textarea(props: TextareaHTMLAttributes<HTMLTextAreaElement>) {
  return <textarea {...props} className={`py-2 ${control} ${props.className ?? ""}`} />;
}

export function Select(props: SelectHTMLAttributes<HTMLSelectElement>) {
  return <select {...props} className={`h-10 ${control} ${props.className ?? ""}`} />;
}

export function Skeleton({ className = "" }: { className?: string }) {
  return <div aria-hidden className={`animate-pulse rounded-lg bg-neutral-800/80 ${className}`} />;
}

export function Spinner({ className = "" }: { className?: string }) {
  return (
    <span
      aria-hidden
      className={`inline-block h-4 w-4 animate-spin rounded-full border-2 border-current border-t-transparent ${className}`}
    />
  );
}

export function ErrorNote({ error, onRetry }: { error: { message: string }; onRetry?: () => void }) {
  return (
    <div role="alert" className="flex items-center justify-between gap-3 rounded-lg border border-red-900 bg-red-950/50 px-4 py-3 text-sm text-red-200">
      <span>{error.message}</span>
      {onRetry && (
        <Button size="sm" onClick={onRetry}>
          Retry
        </Button>
      )}
    </div>
  );
}

/** A button that opens a list of items; closes on Escape, outside clicks and choice. */
export function Menu({
  label,
  children,
  align = "left",
  buttonClass = "",
  ariaLabel,
}: {
  label: ReactNode;
  children: (close: () => void) => ReactNode;
  align?: "left" | "right";
  buttonClass?: string;
  ariaLabel?: string;
}) {
  const [open, setOpen] = useState(false);
  const ref = useRef<HTMLDivElement>(null);
  useEffect(() => {
    if (!open) return;
    const down = (e: PointerEvent) => {
      if (!ref.current?.contains(e.target as Node)) setOpen(false);
    };
    const key = (e: KeyboardEvent) => {
      if (e.key === "Escape") {
        setOpen(false);
        ref.current?.querySelector<HTMLButtonElement>("button")?.focus();
      }
    };
    document.addEventListener("pointerdown", down);
    document.addEventListener("keydown", key);
    return () => {
      document.removeEventListener("pointerdown", down);
      document.removeEventListener("keydown", key);
    };
  }, [open]);
  return (
    <div ref={ref} className="relative">
      <button
        type="button"
        aria-haspopup="menu"
        aria-expanded={open}
        aria-label={ariaLabel}
        onClick={() => setOpen((o) => !o)}
        className={`inline-flex h-9 items-center gap-1 rounded-lg px-3 text-sm text-neutral-200 hover:bg-neutral-800 ${buttonClass}`}
      >
        {label}
      </button>
      {open && (
        <div
          role="menu"
          className={`absolute z-40 mt-1 min-w-48 rounded-xl border border-line bg-raised p-1 shadow-2xl ${align === "right" ? "right-0" : "left-0"}`}
        >
          {children(() => setOpen(false))}
        </div>
      )}
    </div>
  );
}

export const menuItem =
  "flex w-full items-center gap-2 rounded-lg px-3 py-2 text-left text-sm text-neutral-200 hover:bg-neutral-800 focus:bg-neutral-800";

/** Asks before something that cannot be undone. */
export function Confirm({
  title,
  body,
  confirm,
  onConfirm,
  onCancel,
}: {
  title: string;
  body: ReactNode;
  confirm: string;
  onConfirm: () => void;
  onCancel: () => void;
}) {
  const ref = useRef<HTMLDialogElement>(null);
  useEffect(() => {
    // Focus goes back where it was when the dialog ends.
    const before = document.activeElement as HTMLElement | null;
    ref.current?.showModal();
    return () => before?.focus?.();
  }, []);
  return (
    <dialog
      ref={ref}
      onCancel={(e) => {
        e.preventDefault();
        onCancel();
      }}
      className="m-auto w-[min(92vw,26rem)] rounded-2xl border border-line bg-raised p-6 text-neutral-100 backdrop:bg-black/70"
    >
      <h2 className="text-lg font-semibold">{title}</h2>
      <div className="mt-2 text-sm text-muted">{body}</div>
      <div className="mt-6 flex justify-end gap-2">
        {/* The safe choice has the focus: Enter does not destroy anything. */}
        <Button onClick={onCancel} autoFocus>
          Cancel
        </Button>
        <Button variant="danger" onClick={onConfirm}>
          {confirm}
        </Button>
      </div>
    </dialog>
  );
}

export function Chip({
  active,
  className = "",
  ...rest
}: ButtonHTMLAttributes<HTMLButtonElement> & { active: boolean }) {
  return (
    <button
      type="button"
      aria-pressed={active}
      {...rest}
      className={`h-8 rounded-lg border px-3 text-sm transition ${
        active ? "border-accent bg-accent/15 text-white" : "border-line bg-surface text-neutral-300 hover:border-neutral-500"
      } ${className}`}
    />
  );
}

/** A labelled `min`–`max` slider showing its value. */
export function Amount({ label, value, min = 0, max = 1, step = 0.05, digits = 2, onChange, testId }: { label: string; value: number; min?: number; max?: number; step?: number; digits?: number; onChange: (v: number) => void; testId: string }) {
  return (
    <label className="flex flex-col gap-1.5">
      <span className="flex justify-between text-xs font-medium uppercase tracking-wide text-muted">
        {label}
        <span className="tabular-nums normal-case">{value.toFixed(digits)}</span>
      </span>
      <input type="range" min={min} max={max} step={step} value={value} onChange={(e) => onChange(Number(e.target.value))} aria-label={label} data-testid={testId} />
    </label>
  );
}
