// Each page names itself: the window's title follows the page's heading, and after a
// navigation inside the studio the focus moves to that heading, so a screen reader says
// where one has arrived (a first load leaves focus at the top, where the skip link is).

import { useEffect, useRef } from "react";

export function usePageHeading(path: string) {
  const first = useRef(true);
  useEffect(() => {
    const initial = first.current;
    first.current = false;
    let frame = 0;
    let tries = 0;
    const find = () => {
      const h = document.querySelector<HTMLElement>("main h1");
      if (h) {
        const name = h.textContent?.trim();
        document.title = name ? `${name} · Krya` : "Krya";
        if (!initial) {
          if (!h.hasAttribute("tabindex")) h.setAttribute("tabindex", "-1");
          h.focus({ preventScroll: true });
        }
        return;
      }
      // Pages load lazily and may show a skeleton first: look again for a few seconds.
      if (tries++ < 300) frame = requestAnimationFrame(find);
    };
    frame = requestAnimationFrame(find);
    return () => cancelAnimationFrame(frame);
  }, [path]);
}
