// The studio's tools: each is a folder (features/<tool>/) and one entry here, which gives
// it its route, its place in the navigation and its page. App.tsx routes and Header.tsx
// lists from this one list.

import { lazy, type ComponentType, type LazyExoticComponent } from "react";

export interface Tool {
  /** Its route. */
  path: string;
  /** The navigation menu it is listed in. */
  menu: "generate" | "tools";
  label: string;
  hint: string;
  /** Only for signed-in users (others are sent to sign in and brought back). */
  signedIn: boolean;
  /** Its page, loaded when first opened (one chunk per tool). */
  page: LazyExoticComponent<ComponentType>;
}

export const TOOLS: Tool[] = [
  {
    path: "/image",
    menu: "generate",
    label: "Image",
    hint: "Text and image to image",
    signedIn: true,
    page: lazy(() => import("./features/image/ImagePage")),
  },
  {
    path: "/realtime",
    menu: "generate",
    label: "Real-time",
    hint: "Draw and watch it render live",
    signedIn: true,
    page: lazy(() => import("./features/realtime/Realtime")),
  },
  {
    path: "/enhance",
    menu: "tools",
    label: "Enhance",
    hint: "Upscale to print size",
    signedIn: true,
    page: lazy(() => import("./features/enhance/EnhancePage")),
  },
  {
    path: "/edit",
    menu: "tools",
    label: "Edit",
    hint: "Inpaint and outpaint with a mask",
    signedIn: true,
    page: lazy(() => import("./features/edit/EditPage")),
  },
  {
    path: "/train",
    menu: "tools",
    label: "Train",
    hint: "Teach a model your style, face or product",
    signedIn: true,
    page: lazy(() => import("./features/train/TrainPage")),
  },
  // Video and 3D join as they are built (menu "tools" for the ones that work on an
  // image you have).
];

/** The tool at `path`, if any. */
export function toolAt(path: string): Tool | undefined {
  return TOOLS.find((t) => t.path === path);
}
