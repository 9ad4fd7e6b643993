// Tool icons as inline SVG (emoji glyphs are missing from many systems' fonts).

const paths: Record<string, string> = {
  brush: "M4 20c2 0 4-1 4-3s-1-3-3-3-3 2-3 4v2h2zM9 14l9-9a2 2 0 0 1 3 3l-9 9",
  eraser: "M7 21h13M4 15l8-8 6 6-6 6H8z",
  rect: "M4 6h16v12H4z",
  circle: "M12 4a8 8 0 1 0 0 16 8 8 0 1 0 0-16z",
  line: "M5 19L19 5",
  polygon: "M12 3l8 6-3 10H7L4 9z",
  select: "M4 4h4M12 4h4M20 4v4M20 12v4M20 20h-4M12 20H8M4 20v-4M4 12V8",
  eyedropper: "M14 4l6 6M17 7l-9 9-4 1 1-4 9-9M3 21l2-2",
  fill: "M5 11l7-7 7 7-7 7zM19 15c0 2 1 3 1 4a1 1 0 0 1-2 0c0-1 1-2 1-4z",
  eye: "M2 12s4-7 10-7 10 7 10 7-4 7-10 7S2 12 2 12zM12 9a3 3 0 1 0 0 6 3 3 0 1 0 0-6z",
  eyeOff: "M3 3l18 18M10 6c.7-.1 1.3-.1 2-.1 6 0 10 7 10 7a18 18 0 0 1-3 3.6M6 7.5A17 17 0 0 0 2 12s4 7 10 7c1.5 0 2.9-.4 4.1-1",
  dice: "M5 5h14v14H5zM9 9h.01M15 15h.01M15 9h.01M9 15h.01M12 12h.01",
};

export function Icon({ name, className = "h-5 w-5" }: { name: keyof typeof paths; className?: string }) {
  return (
    <svg viewBox="0 0 24 24" className={className} fill="none" stroke="currentColor" strokeWidth={2} strokeLinecap="round" strokeLinejoin="round" aria-hidden>
      <path d={paths[name]} />
    </svg>
  );
}
