/// <reference types="vitest/config" />
import tailwindcss from "@tailwindcss/vite";
import { defineConfig } from "vite";

// `npm run dev` serves the studio with hot reload and sends API calls to a running
// `krya serve` (KRYA_API, default http://127.0.0.1:7860). `npm run build` is what the
// krya-studio crate embeds.
const api = process.env.KRYA_API ?? "http://127.0.0.1:7860";

export default defineConfig({
  plugins: [tailwindcss()],
  build: {
    // One chunk per page keeps the first load small.
    chunkSizeWarningLimit: 400,
  },
  server: {
    proxy: { "/api": { target: api, changeOrigin: false }, "/ws": { target: api, ws: true } },
  },
  test: {
    include: ["test/**/*.test.ts"],
    environment: "node",
  },
});
