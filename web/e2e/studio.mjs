// The studio end to end in Chromium against a running `krya serve` with a tiny model:
//   node e2e/studio.mjs BASE_URL SCREENSHOT_DIR
// Two people: Ann registers (after a refused short password), signs out, fails and then
// succeeds to sign in, generates (a 422 shown at its field first; then live progress with
// a preview, then the image), downloads the PNG (its `parameters` chunk checked), makes
// it public, makes an API key. Bob, on a phone-sized window, finds it in the gallery,
// likes it (1, and still 1 after a reload), remixes it, and is told when he runs out of
// credits. Ann deletes it from her dashboard and it leaves Bob's gallery. Every page is
// photographed at 1440 and 390 px, and no page may be wider than the window or throw.

import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [base, shots] = process.argv.slice(2);
if (!base || !shots) {
  console.error("usage: node e2e/studio.mjs BASE_URL SCREENSHOT_DIR");
  process.exit(2);
}

const PROMPT = "a red fox in the snow";
const SKETCH = "pencil sketch of a cat";
const LORA_PROMPT = "a fox in the style";
const DESKTOP = { width: 1440, height: 900 };
const PHONE = { width: 390, height: 844 };

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    // A fake camera (a test pattern), granted without a prompt: the webcam layer.
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
  ],
});

const uncaught = [];
let current = "start";

function check(ok, message) {
  if (!ok) throw new Error(message);
}

async function step(name, fn) {
  current = name;
  const t0 = Date.now();
  await fn();
  console.log(`ok  ${name} (${Date.now() - t0} ms)`);
}

async function person(viewport, who) {
  const context = await browser.newContext({ viewport, acceptDownloads: true, baseURL: base });
  context.setDefaultTimeout(20_000);
  const page = await context.newPage();
  page.on("pageerror", (e) => uncaught.push(`${who} on ${page.url()}: ${e.message}`));
  // What the progress view showed, however briefly (a tiny model is quick).
  await page.addInitScript(() => {
    window.__seen = { status: new Set(), preview: false };
    new MutationObserver(() => {
      const s = document.querySelector('[data-testid="job-status"]');
      if (s) window.__seen.status.add(s.textContent);
      if (document.querySelector('[data-testid="job-preview"]')) window.__seen.preview = true;
    }).observe(document, { subtree: true, childList: true, characterData: true });
  });
  return { context, page };
}

async function register(page, name, email, password) {
  await page.goto("/login");
  await page.getByRole("tab", { name: "Register" }).click();
  await page.getByLabel("Name", { exact: true }).fill(name);
  await page.getByLabel("Email", { exact: true }).fill(email);
  await page.getByLabel("Password", { exact: true }).fill(password);
  await page.getByRole("button", { name: "Create account" }).click();
}

async function shoot(page, name, ready) {
  for (const [w, size] of [
    [1440, DESKTOP],
    [390, PHONE],
  ]) {
    await page.setViewportSize(size);
    await ready();
    // Let images and fonts settle.
    await page.waitForTimeout(250);
    const width = await page.evaluate(() => document.documentElement.scrollWidth);
    check(width <= w, `${name} overflows a ${w} px screen (${width} px wide)`);
    await page.screenshot({ path: join(shots, `${name}-${w}.png`), fullPage: true });
  }
  await page.setViewportSize(DESKTOP);
}

/** The PNG's tEXt chunks, keyword → text. */
function pngText(bytes) {
  check(bytes.subarray(0, 8).equals(Buffer.from([137, 80, 78, 71, 13, 10, 26, 10])), "the download is not a PNG");
  const out = {};
  for (let i = 8; i + 8 <= bytes.length; ) {
    const len = bytes.readUInt32BE(i);
    const type = bytes.toString("latin1", i + 4, i + 8);
    if (type === "tEXt") {
      const data = bytes.subarray(i + 8, i + 8 + len);
      const zero = data.indexOf(0);
      out[data.toString("latin1", 0, zero)] = data.toString("latin1", zero + 1);
    }
    i += 12 + len;
  }
  return out;
}

let ann, bob, generationId, jobId, downloaded;

try {
  ann = await person(DESKTOP, "ann");
  const a = ann.page;

  await step("set up: the server's setup link; a short password is refused next to its field", async () => {
    const link = readFileSync(process.env.KRYA_SETUP_LINK, "utf8").trim();
    await a.goto(link);
    await a.getByRole("heading", { name: "Set up this server" }).waitFor();
    await a.getByLabel("Name", { exact: true }).fill("Ann");
    await a.getByLabel("Email", { exact: true }).fill("ann@example.com");
    await a.getByLabel("Password", { exact: true }).fill("short");
    await a.getByRole("button", { name: "Create the administrator" }).click();
    const err = a.locator("[data-field-error]");
    await err.waitFor();
    check((await err.textContent()).includes("at least 8 characters"), `unexpected: ${await err.textContent()}`);
    check((await a.getByLabel("Password", { exact: true }).getAttribute("aria-invalid")) === "true", "the password field is not marked invalid");
  });

  await step("Ann is the administrator, on /image", async () => {
    await a.getByLabel("Password", { exact: true }).fill("correct horse battery");
    await a.getByRole("button", { name: "Create the administrator" }).click();
    await a.waitForURL("**/image");
    await a.getByLabel("Prompt", { exact: true }).waitFor();
  });

  await step("sign out; a wrong password is explained; sign in", async () => {
    await a.getByRole("button", { name: "Account" }).click();
    await a.getByRole("menuitem", { name: "Sign out" }).click();
    await a.waitForURL("**/login");
    await a.getByLabel("Email", { exact: true }).fill("ann@example.com");
    await a.getByLabel("Password", { exact: true }).fill("not my password");
    await a.getByRole("button", { name: "Sign in" }).last().click();
    const err = a.getByTestId("form-error");
    await err.waitFor();
    check((await err.textContent()).includes("wrong email or password"), `unexpected: ${await err.textContent()}`);
    await a.getByLabel("Password", { exact: true }).fill("correct horse battery");
    await a.getByRole("button", { name: "Sign in" }).last().click();
    await a.waitForURL("**/image");
    await a.getByLabel("Prompt", { exact: true }).waitFor();
  });

  await step("a server 422 is shown next to its field", async () => {
    await a.getByLabel("Model", { exact: true }).waitFor();
    check((await a.getByLabel("Model", { exact: true }).inputValue()) === "tiny", "the installed model is not preselected");
    await a.getByLabel("Prompt", { exact: true }).fill(PROMPT);
    await a.getByText("Advanced").click();
    await a.getByLabel("Steps", { exact: true }).fill("500");
    await a.getByLabel("Prompt", { exact: true }).press("Control+Enter");
    const err = a.locator("[data-field-error]");
    await err.waitFor();
    check((await err.textContent()).includes("must be from 1 to 150"), `unexpected: ${await err.textContent()}`);
    check((await a.getByLabel("Steps", { exact: true }).getAttribute("aria-invalid")) === "true", "Steps is not marked invalid");
  });

  await step("generate: live progress with a preview, then the image", async () => {
    await a.getByLabel("Steps", { exact: true }).fill("30");
    await a.getByLabel("Seed", { exact: true }).fill("1234");
    await a.getByLabel("Prompt", { exact: true }).press("Control+Enter");
    await a.getByTestId("result-image").waitFor({ timeout: 120_000 });
    const seen = await a.evaluate(() => ({ status: [...window.__seen.status], preview: window.__seen.preview }));
    check(
      seen.status.some((s) => /^Step ([1-9]\d*) \/ 30$/.test(s)),
      `no step counter was shown: ${JSON.stringify(seen.status)}`,
    );
    check(seen.preview, "no preview was shown while it rendered");
    const natural = await a.getByTestId("result-image").evaluate((img) => img.naturalWidth);
    check(natural === 16, `the result image did not load (${natural} px wide)`);
    generationId = await a.evaluate(async () => (await (await fetch("/api/generate/images")).json()).items[0].id);
    // The gallery shows jobs of any kind; an image job is found by its generation's id too.
    jobId = await a.evaluate(async (g) => (await (await fetch(`/api/feed/${g}`)).json()).id, generationId);
    const recent = a.getByTestId("recent").locator("img");
    await recent.first().waitFor();
  });

  await step("download: a PNG carrying its parameters", async () => {
    const [download] = await Promise.all([a.waitForEvent("download"), a.getByTestId("download").click()]);
    downloaded = readFileSync(await download.path());
    const text = pngText(downloaded);
    check(typeof text.parameters === "string", `no parameters chunk: ${Object.keys(text)}`);
    check(text.parameters.startsWith(PROMPT), `parameters: ${text.parameters}`);
    check(/Steps: 30/.test(text.parameters) && /Seed: 1234/.test(text.parameters), `parameters: ${text.parameters}`);
  });

  await step("LoRA: pick one for the model, weigh it, generate; the image's parameters carry it", async () => {
    await a.getByLabel("LoRAs", { exact: true }).selectOption("style");
    const weight = a.getByTestId("lora-weight-style");
    await weight.waitFor();
    check((await weight.inputValue()) === "1", `a new LoRA's weight: ${await weight.inputValue()}`);
    await weight.fill("0.75");
    await a.getByLabel("Prompt", { exact: true }).fill(LORA_PROMPT);
    await a.getByTestId("generate").click();
    await a.waitForFunction((p) => document.querySelector('[data-testid="result-image"]')?.getAttribute("alt") === p, LORA_PROMPT, { timeout: 120_000 });
    const g = await a.evaluate(async () => (await (await fetch("/api/generate/images")).json()).items[0]);
    check(JSON.stringify(g.loras) === JSON.stringify([{ id: "style", weight: 0.75 }]), `loras: ${JSON.stringify(g.loras)}`);
    const png = await a.evaluate(async (url) => Array.from(new Uint8Array(await (await fetch(url)).arrayBuffer())), g.images[0].url);
    const text = pngText(Buffer.from(png));
    check(text.parameters.startsWith(`${LORA_PROMPT} <lora:style:0.75>\n`), `parameters: ${text.parameters}`);
    await a.getByRole("button", { name: "Remove style" }).click();
    check((await a.getByTestId("lora-style").count()) === 0, "the LoRA was not removed");
  });

  await step("image-to-image: upload a reference, generate at its size", async () => {
    const ref = join(shots, "reference.png");
    writeFileSync(ref, downloaded);
    await a.getByTestId("reference-input").setInputFiles(ref);
    await a.getByRole("img", { name: "Reference" }).waitFor();
    check((await a.getByRole("button", { name: "Image", exact: true }).getAttribute("aria-pressed")) === "true", "the reference's own size is not chosen");
    await a.getByLabel("Prompt", { exact: true }).fill(SKETCH);
    await a.getByTestId("generate").click();
    await a.waitForFunction((p) => document.querySelector('[data-testid="result-image"]')?.getAttribute("alt") === p, SKETCH, { timeout: 120_000 });
    const g = await a.evaluate(async () => (await (await fetch("/api/generate/images")).json()).items[0]);
    check(g.prompt === SKETCH && typeof g.init_image === "string" && g.strength === 0.6, `img2img: ${JSON.stringify(g)}`);
    check(g.width === 16 && g.height === 16, `size: ${g.width}x${g.height}`);
    // Back to the first image, from the strip of this session.
    await a.getByRole("button", { name: `Show: ${PROMPT} (completed)` }).click();
    await a.waitForFunction((p) => document.querySelector('[data-testid="result-image"]')?.getAttribute("alt") === p, PROMPT);
  });

  await step("make it public", async () => {
    const toggle = a.getByTestId("toggle-public");
    check((await toggle.getAttribute("aria-pressed")) === "false", "new generations are private");
    await toggle.click();
    await a.waitForFunction(() => document.querySelector('[data-testid="toggle-public"]')?.getAttribute("aria-pressed") === "true");
  });

  await step("search from the header finds it in the gallery", async () => {
    const search = a.getByRole("searchbox", { name: "Search the gallery" });
    await search.fill("RED FOX");
    await search.press("Enter");
    await a.waitForURL("**/feed?q=RED%20FOX");
    await a.getByRole("img", { name: PROMPT, exact: true }).waitFor();
    await search.fill("zebra");
    await search.press("Enter");
    await a.getByText("No shared image matches.").waitFor();
  });

  await step("settings: an API key is shown once and revoked", async () => {
    await a.goto("/settings");
    await a.getByLabel("Key name", { exact: true }).fill("ci");
    await a.getByRole("button", { name: "Create key" }).click();
    const key = await a.getByTestId("new-key-value").textContent();
    check(key.startsWith("krya_"), `key: ${key}`);
    const me = await a.evaluate(async (k) => (await fetch("/api/auth/me", { headers: { authorization: `Bearer ${k}` } })).status, key);
    check(me === 200, `the new key does not work (${me})`);
    await a.getByRole("button", { name: "Done" }).click();
    check((await a.getByTestId("new-key").count()) === 0, "the key is still shown");
    await a.getByTestId("api-keys").getByRole("button", { name: "Revoke" }).click();
    await a.getByRole("dialog").getByRole("button", { name: "Revoke" }).click();
    await a.getByText("No keys yet.").waitFor();
    const after = await a.evaluate(async (k) => (await fetch("/api/auth/me", { headers: { authorization: `Bearer ${k}` } })).status, key);
    check(after === 401, `a revoked key still works (${after})`);
    const left = await a.getByTestId("usage-credits-left").textContent();
    check(left === "47", `credits left: ${left}`);
  });

  await step("real-time canvas: draw, watch it render, undo, layers, save a frame", async () => {
    await a.getByRole("button", { name: "Generate" }).first().click();
    await a.getByRole("menuitem", { name: /Real-time/ }).click();
    await a.waitForURL("**/realtime");
    await a.getByTestId("connection").filter({ hasText: "live" }).waitFor();
    await a.getByLabel("Prompt", { exact: true }).fill("a lighthouse at dusk");
    const out = a.getByTestId("live-output");
    // Text only first: a frame arrives without drawing anything.
    await out.waitFor({ timeout: 60_000 });
    const first = await out.getAttribute("src");
    const box = await a.getByTestId("drawing-canvas").boundingBox();
    const at = (fx, fy) => [box.x + box.width * fx, box.y + box.height * fy];
    // A brush stroke.
    await a.mouse.move(...at(0.2, 0.2));
    await a.mouse.down();
    for (let k = 1; k <= 10; k++) await a.mouse.move(...at(0.2 + k * 0.05, 0.2 + k * 0.04));
    await a.mouse.up();
    await a.waitForFunction((src) => document.querySelector('[data-testid="live-output"]')?.getAttribute("src") !== src, first);
    // Read in the same turn as it is seen loaded: the next frame may replace it at any time.
    const natural = await (
      await a.waitForFunction(() => {
        const img = document.querySelector('[data-testid="live-output"]');
        return img?.complete && img.naturalWidth > 0 && img.naturalWidth;
      })
    ).jsonValue();
    check(natural === 32, `the frame is ${natural} px wide, not the chosen 32`);
    // A LoRA: picked, it renders a new frame with no error; removed again.
    const plainFrame = await out.getAttribute("src");
    await a.getByLabel("LoRAs", { exact: true }).selectOption("style");
    await a.getByTestId("lora-weight-style").waitFor();
    await a.waitForFunction((src) => document.querySelector('[data-testid="live-output"]')?.getAttribute("src") !== src, plainFrame, { timeout: 60_000 });
    check((await a.getByRole("alert").count()) === 0, `an error with the LoRA: ${await a.getByRole("alert").allTextContents()}`);
    await a.getByRole("button", { name: "Remove style" }).click();
    // A rectangle with the keyboard shortcut for the tool.
    await a.keyboard.press("r");
    check((await a.getByRole("button", { name: "Rectangle" }).getAttribute("aria-pressed")) === "true", "R did not pick the rectangle");
    await a.mouse.move(...at(0.5, 0.5));
    await a.mouse.down();
    await a.mouse.move(...at(0.8, 0.75));
    await a.mouse.up();
    const undo = a.getByRole("button", { name: "Undo" });
    check(await undo.isEnabled(), "nothing to undo after drawing");
    await a.keyboard.press("Control+z");
    await a.keyboard.press("Control+z");
    await a.waitForFunction(() => [...document.querySelectorAll("button")].find((b) => b.textContent === "Undo")?.disabled === true);
    await a.keyboard.press("Control+Shift+z");
    check(await undo.isEnabled(), "redo did not bring a shape back");
    const src = () => out.getAttribute("src");
    const changed = (before) =>
      a.waitForFunction((b) => document.querySelector('[data-testid="live-output"]')?.getAttribute("src") !== b, before, { timeout: 30_000 });
    // A blue rectangle; the eyedropper reads its colour back.
    await a.getByLabel("Colour", { exact: true }).fill("#1e90ff");
    await a.mouse.move(...at(0.1, 0.6));
    await a.mouse.down();
    await a.mouse.move(...at(0.3, 0.9));
    await a.mouse.up();
    await a.getByLabel("Colour", { exact: true }).fill("#000000");
    await a.getByRole("button", { name: "Eyedropper" }).click();
    await a.mouse.click(...at(0.2, 0.75));
    await a.waitForFunction(() => document.querySelector('input[aria-label="Colour"]')?.value === "#1e90ff");
    check((await a.getByRole("button", { name: "Brush" }).getAttribute("aria-pressed")) === "true", "the eyedropper did not hand back to the brush");
    // Select: drag the rectangle; the output follows.
    let before = await src();
    await a.getByRole("button", { name: "Select" }).click();
    await a.mouse.move(...at(0.2, 0.75));
    await a.mouse.down();
    await a.mouse.move(...at(0.3, 0.7), { steps: 5 });
    await a.mouse.up();
    await changed(before);
    // Fill the empty paper around the shapes; then a polygon of three points.
    before = await src();
    await a.getByLabel("Colour", { exact: true }).fill("#22aa44");
    await a.getByRole("button", { name: "Fill" }).click();
    await a.mouse.click(...at(0.95, 0.05));
    await changed(before);
    await a.getByRole("button", { name: "Polygon" }).click();
    await a.mouse.click(...at(0.6, 0.1));
    await a.mouse.click(...at(0.8, 0.1));
    await a.mouse.click(...at(0.7, 0.3));
    await a.mouse.dblclick(...at(0.7, 0.3));
    // Layers: add one, hide it, blend it, add an image layer.
    await a.getByRole("button", { name: "+ Layer" }).click();
    await a.getByRole("button", { name: "Hide Layer 2" }).click();
    await a.getByRole("button", { name: "Show Layer 2" }).waitFor();
    await a.getByTestId("image-layer-input").setInputFiles(join(shots, "reference.png"));
    await a.getByTestId("layers").getByText("reference.png").waitFor();
    await a.getByLabel("reference.png blend mode", { exact: true }).selectOption("multiply");
    await a.getByRole("button", { name: "Move reference.png down" }).click();
    // A camera layer (Chromium's fake device) streams on its own: frames keep coming.
    await a.getByRole("button", { name: "+ Camera" }).click();
    await a.getByRole("button", { name: "Delete Camera" }).waitFor();
    before = await src();
    await changed(before);
    await changed(await src());
    await a.getByRole("button", { name: "Delete Camera" }).click();
    // The layers panel folds away and back.
    await a.getByRole("button", { name: "◂ Layers" }).click();
    check((await a.getByTestId("layers").count()) === 0, "the layers panel did not fold");
    await a.getByRole("button", { name: "▸ Layers" }).click();
    // The stream keeps up: fps is shown, and a frame can be saved.
    await a.waitForFunction(() => /[1-9]\d* fps/.test(document.querySelector('[data-testid="fps"]')?.textContent ?? ""));
    await a.getByTestId("save-frame").click();
    await a.getByText("Saved to your generations").waitFor();
    const saved = await a.evaluate(async () => (await (await fetch("/api/generate/images")).json()).items[0]);
    check(saved.prompt === "a lighthouse at dusk" && saved.images.length === 1 && saved.credits_used === 0, `saved: ${JSON.stringify(saved)}`);
  });

  bob = await person(PHONE, "bob");
  const b = bob.page;

  await step("a second person sees it in the gallery", async () => {
    await register(b, "Bob", "bob@example.com", "hunter2hunter2");
    await b.waitForURL("**/image");
    await b.getByRole("link", { name: "Gallery" }).click();
    await b.waitForURL("**/feed");
    // The page names itself, and focus moves to its heading.
    await b.waitForFunction(() => document.activeElement?.tagName === "H1" && document.activeElement.textContent === "Gallery");
    check((await b.title()) === "Gallery · Krya", `title: ${await b.title()}`);
    await b.getByRole("img", { name: PROMPT }).click();
    await b.waitForURL(`**/feed/${jobId}`);
    check((await b.getByTestId("detail-prompt").textContent()) === PROMPT, "wrong detail");
    check((await b.getByTestId("author").textContent()).includes("@ann"), "no author link");
  });

  await step("like: the count goes to 1 and stays 1 after a reload", async () => {
    check((await b.getByTestId("likes-count").textContent()) === "0", "starts at 0");
    await b.getByTestId("like").click();
    await b.waitForFunction(() => document.querySelector('[data-testid="likes-count"]')?.textContent === "1");
    await b.reload();
    await b.getByTestId("likes-count").waitFor();
    check((await b.getByTestId("likes-count").textContent()) === "1", "the like did not last");
    check((await b.getByTestId("like").getAttribute("aria-pressed")) === "true", "not shown as liked");
  });

  await step("remix: /image prefilled, and the new image is Bob's remix", async () => {
    await b.getByTestId("remix").click();
    await b.getByTestId("remix-banner").waitFor();
    await b.waitForFunction((p) => document.querySelector("#prompt")?.value === p, PROMPT);
    check((await b.getByLabel("Seed", { exact: true }).inputValue()) === "1234", "the seed was not carried over");
    await b.getByTestId("generate").click();
    await b.getByTestId("result-image").waitFor({ timeout: 120_000 });
    const newest = await b.evaluate(async () => (await (await fetch("/api/generate/images")).json()).items[0]);
    check(newest.remix_of === generationId, `remix_of: ${newest.remix_of}`);
    check(newest.prompt === PROMPT, `prompt: ${newest.prompt}`);
  });

  await step("out of credits: the message says so", async () => {
    const bobId = await b.evaluate(async () => (await (await fetch("/api/auth/me")).json()).id);
    // Ann set the server up: she is its administrator.
    const status = await a.evaluate(
      async (id) =>
        (
          await fetch(`/api/admin/users/${id}/credits`, {
            method: "POST",
            headers: { "content-type": "application/json" },
            body: JSON.stringify({ amount: -1000 }),
          })
        ).status,
      bobId,
    );
    check(status === 200, `grant: ${status}`);
    await b.getByTestId("generate").click();
    const err = b.getByTestId("generate-error");
    await err.waitFor();
    const text = await err.textContent();
    check(text.includes("Not enough credits") && text.includes("0 are left"), `unexpected: ${text}`);
  });

  await step("moderation: Bob reports it; Ann hides it and shows it again, suspends Bob and lets him back", async () => {
    await b.goto(`/feed/${jobId}`);
    await b.getByTestId("report").click();
    await b.getByLabel("What is wrong with it?").fill("not a lighthouse");
    await b.getByTestId("report-send").click();
    await b.getByTestId("reported").waitFor();
    await a.getByRole("button", { name: "Account" }).click();
    await a.getByRole("menuitem", { name: "Moderation" }).click();
    await a.waitForURL("**/admin");
    const row = a.getByTestId("reported-item");
    await row.getByTestId("report-reason").filter({ hasText: "not a lighthouse" }).waitFor();
    check((await row.getByTestId("report-reason").textContent()).includes("@bob"), "the reporter is not named");
    await row.getByTestId("hide").click();
    await row.getByRole("button", { name: "Show again" }).waitFor();
    await b.goto(`/feed/${jobId}`);
    await b.getByText("not shared (any more)").waitFor();
    await row.getByRole("button", { name: "Show again" }).click();
    await row.getByTestId("hide").waitFor();
    await b.goto(`/feed/${jobId}`);
    await b.getByTestId("detail-prompt").waitFor();

    await a.getByTestId("account-search").fill("bob@");
    const account = a.getByTestId("account").filter({ hasText: "@bob" });
    await account.getByRole("button", { name: "Suspend" }).click();
    await account.getByText("suspended", { exact: true }).waitFor();
    const refused = await b.evaluate(async () => {
      const r = await fetch("/api/auth/me");
      return [r.status, (await r.json()).error.message];
    });
    check(refused[0] === 403 && refused[1].includes("suspended"), `suspended Bob: ${refused}`);
    await account.getByRole("button", { name: "Lift suspension" }).click();
    await account.getByRole("button", { name: "Suspend" }).waitFor();
    check((await b.evaluate(async () => (await fetch("/api/auth/me")).status)) === 200, "Bob was not let back in");
  });

  await step("enhance: upload, 2× with the tiny upscaler, compare before and after (slider, zoom), the result in the gallery with its source", async () => {
    const source = join(shots, "enhance-source.png");
    writeFileSync(source, downloaded);
    await a.goto("/enhance");
    await a.getByRole("heading", { name: "Enhance" }).waitFor();
    await a.getByLabel("Image to enhance").setInputFiles(source);
    await a.getByTestId("enhance-source").waitFor();
    await a.getByRole("button", { name: "2×" }).click();
    const sizes = (await a.getByTestId("enhance-size").textContent()).match(/(\d+) × (\d+) → (\d+) × (\d+)/);
    check(sizes && +sizes[3] === 2 * +sizes[1] && +sizes[4] === 2 * +sizes[2], `size: ${sizes}`);
    await a.getByTestId("enhance-start").click();
    await a.getByTestId("compare").waitFor({ timeout: 120_000 });
    check((await a.getByTestId("enhance-result-size").textContent()) === `${sizes[3]} × ${sizes[4]}`, "the result is not 2×");
    const clip = () => a.getByTestId("compare").locator("div").first().getAttribute("style");
    const before = await clip();
    await a.getByTestId("compare-slider").fill("20");
    await a.waitForFunction((b) => document.querySelector('[data-testid="compare"] div')?.getAttribute("style") !== b, before);
    check((await clip()).includes("80%"), `the slider did not move the split: ${await clip()}`);
    await a.getByRole("button", { name: "Zoom in" }).click();
    check((await a.getByTestId("compare-zoom").textContent()) === "200%", "zoom in did nothing");
    check((await a.getByAltText("After").getAttribute("style")).includes("scale(2)"), "the after image is not zoomed");
    check((await a.getByAltText("Before").getAttribute("style")).includes("scale(2)"), "the before image is not zoomed with it");
    await a.getByRole("button", { name: "Zoom out" }).click();
    const sourceId = await a.evaluate(async () => (await (await fetch("/api/jobs?kind=enhance")).json()).items[0].outputs[0].parent_id);
    // Its zoomable copy, for outputs too large to show whole: the shape and a JPEG tile.
    const tiles = await a.evaluate(async () => {
      const out = (await (await fetch("/api/jobs?kind=enhance")).json()).items[0].outputs[0];
      const info = await (await fetch(`/api/assets/${out.id}/tiles`)).json();
      const tile = await fetch(`/api/assets/${out.id}/tiles/${info.levels - 1}/0/0`);
      return [out.width, info.width, tile.status, tile.headers.get("content-type")];
    });
    check(tiles[0] === tiles[1] && tiles[2] === 200 && tiles[3] === "image/jpeg", `tiles: ${tiles}`);
    await a.goto("/app");
    await a.getByRole("link", { name: "Open: enhance" }).first().click();
    await a.getByTestId("source-link").waitFor();
    check((await a.getByTestId("source-link").getAttribute("href")).endsWith(sourceId), "the source is not linked");
  });

  await step("edit: paint a mask and inpaint (a new version, its parent the original; undo and redo), compare, outpaint to 16:9 (the new size), then an instruction", async () => {
    const source = join(shots, "edit-source.png");
    writeFileSync(source, downloaded);
    await a.goto("/edit");
    await a.getByRole("heading", { name: "Edit" }).waitFor();
    await a.getByLabel("Image to edit").setInputFiles(source);
    const mask = a.getByTestId("edit-mask");
    await mask.waitFor();
    check((await a.getByTestId("edit-run").textContent()).includes("Paint a mask first") && (await a.getByTestId("edit-run").isDisabled()), "inpaint is offered before a mask is painted");
    const box = await mask.boundingBox();
    // Click to segment: a click adds, a right-click removes; once the image is read, a
    // click's mask is back within a second.
    await a.getByRole("group", { name: "Mask tool" }).getByRole("button", { name: "Select object" }).click();
    const note = a.getByTestId("edit-segment");
    await a.mouse.click(box.x + box.width * 0.4, box.y + box.height * 0.4);
    await a.waitForFunction(() => document.querySelector('[data-testid="edit-segment"]')?.textContent?.includes("score"), null, { timeout: 60_000 });
    check((await note.textContent()).includes("image read"), `the first click reads the image: ${await note.textContent()}`);
    const t0 = Date.now();
    await a.mouse.click(box.x + box.width * 0.7, box.y + box.height * 0.6, { button: "right" });
    await a.waitForFunction(() => document.querySelectorAll('[data-testid="edit-click"]').length === 2 && !document.querySelector('[data-testid="edit-segment"]')?.textContent?.includes("Finding"));
    const took = Date.now() - t0;
    check(took < 1000 && !(await note.textContent()).includes("image read"), `the second click took ${took} ms: ${await note.textContent()}`);
    // Another segmentation model from the picker: it reads the image for itself.
    await a.getByLabel("Segmentation model").selectOption("sam-mobile");
    await a.mouse.click(box.x + box.width * 0.3, box.y + box.height * 0.3);
    await a.waitForFunction(
      () => document.querySelectorAll('[data-testid="edit-click"]').length === 3 && document.querySelector('[data-testid="edit-segment"]')?.textContent?.includes("image read"),
      null,
      { timeout: 60_000 },
    );
    const segmented = await a.evaluate(async () => {
      const r = await fetch("/api/segment", { method: "POST", headers: { "content-type": "application/json" }, body: "{}" });
      return r.status;
    });
    check(segmented === 422, `a segment request without an image: ${segmented}`);
    // Zoom: the picture outgrows its frame, which scrolls.
    await a.getByRole("button", { name: "Zoom in" }).click();
    check((await a.getByTestId("edit-zoom").textContent()) === "200%", "zoom in did nothing");
    check(await a.getByTestId("edit-viewport").evaluate((v) => v.scrollWidth > v.clientWidth), "the zoomed picture does not scroll");
    await a.getByRole("button", { name: "Zoom out" }).click();
    // A lasso fills its path; grow and shrink keep a painted mask; clear empties it.
    await a.getByRole("group", { name: "Mask tool" }).getByRole("button", { name: "Lasso" }).click();
    await a.mouse.move(box.x + box.width * 0.2, box.y + box.height * 0.2);
    await a.mouse.down();
    await a.mouse.move(box.x + box.width * 0.6, box.y + box.height * 0.25, { steps: 4 });
    await a.mouse.move(box.x + box.width * 0.4, box.y + box.height * 0.7, { steps: 4 });
    await a.mouse.up();
    check((await a.getByTestId("edit-run").textContent()) === "Inpaint", "the lasso painted nothing");
    await a.getByRole("button", { name: "Grow the mask" }).click();
    await a.getByRole("button", { name: "Shrink the mask" }).click();
    check((await a.getByTestId("edit-run").textContent()) === "Inpaint", "grow then shrink emptied the mask");
    await a.getByRole("button", { name: "Clear" }).click();
    check((await a.getByTestId("edit-run").textContent()).includes("Paint a mask first"), "clear left paint");
    await a.getByRole("group", { name: "Mask tool" }).getByRole("button", { name: "Brush" }).click();
    await a.mouse.move(box.x + box.width * 0.3, box.y + box.height * 0.3);
    await a.mouse.down();
    await a.mouse.move(box.x + box.width * 0.6, box.y + box.height * 0.55, { steps: 8 });
    await a.mouse.up();
    const original = await a.getByTestId("edit-image").getAttribute("data-version");
    await a.getByLabel("Prompt").fill("a fox");
    await a.getByTestId("edit-run").click();
    await a.waitForFunction(() => document.querySelectorAll('[data-testid="edit-version"]').length === 2, null, { timeout: 120_000 });
    const edited = await a.getByTestId("edit-image").getAttribute("data-version");
    check(edited && edited !== original, "the new version is not shown");
    const job = await a.evaluate(async () => (await (await fetch("/api/jobs?kind=edit")).json()).items[0]);
    check(job.outputs[0].id === edited && job.outputs[0].parent_id === original, `the edit's parent: ${JSON.stringify(job.outputs[0])}`);
    check(job.params.operation === "inpaint" && job.params.prompt === "a fox", `params: ${JSON.stringify(job.params)}`);
    await a.getByTestId("edit-undo").click();
    check((await a.getByTestId("edit-image").getAttribute("data-version")) === original, "undo did not go back to the original");
    await a.getByTestId("edit-redo").click();
    check((await a.getByTestId("edit-image").getAttribute("data-version")) === edited, "redo did not come back");
    await a.getByTestId("edit-compare").check();
    await a.getByTestId("compare-slider").waitFor();
    await a.getByTestId("edit-compare").uncheck();
    await a.getByRole("group", { name: "Operation" }).getByRole("button", { name: "Outpaint" }).click();
    await a.getByRole("group", { name: "Aspect" }).getByRole("button", { name: "16:9" }).click();
    const want = (await a.getByTestId("edit-outpaint-size").textContent()).match(/→ (\d+) × (\d+)/);
    check(want && Math.abs(+want[1] / +want[2] - 16 / 9) < 0.05, `outpaint size: ${want}`);
    await a.getByTestId("edit-run").click();
    await a.waitForFunction(() => document.querySelectorAll('[data-testid="edit-version"]').length === 3, null, { timeout: 120_000 });
    check((await a.getByTestId("edit-size").textContent()) === `${want[1]} × ${want[2]}`, `the outpainted size: ${await a.getByTestId("edit-size").textContent()}`);
    const outpainted = await a.evaluate(async () => (await (await fetch("/api/jobs?kind=edit")).json()).items[0].outputs[0]);
    check(outpainted.width === +want[1] && outpainted.height === +want[2] && outpainted.parent_id === edited, `outpaint: ${JSON.stringify(outpainted)}`);
    // Compared, the original sits where it lies in the outpainted picture (not stretched
    // over the new area).
    await a.getByTestId("edit-compare").check();
    const placed = a.getByTestId("compare-before-placed");
    await placed.waitFor();
    const [ow, oh] = [outpainted.width, outpainted.height];
    const src = await a.evaluate(async (id) => {
      const img = new Image();
      img.src = `/api/assets/${id}`;
      await img.decode();
      return { width: img.naturalWidth, height: img.naturalHeight };
    }, original);
    const style = await placed.evaluate((e) => ({ width: parseFloat(e.style.width), height: parseFloat(e.style.height) }));
    check(Math.abs(style.width - (100 * src.width) / ow) < 0.01 && Math.abs(style.height - (100 * src.height) / oh) < 0.01, `the original's place: ${JSON.stringify(style)} of ${ow} × ${oh}, original ${src.width} × ${src.height}`);
    await a.getByTestId("edit-compare").uncheck();
    // An instruction, with the instruction-editing model (the only one offered for it).
    await a.getByRole("group", { name: "Operation" }).getByRole("button", { name: "Instruct" }).click();
    await a.getByLabel("Image model").locator("option", { hasText: "ip2p" }).waitFor({ state: "attached" });
    check((await a.getByLabel("Image model").locator("option").count()) === 1, "instruct offers models that cannot follow instructions");
    await a.getByLabel("Instruction").fill("");
    check(await a.getByTestId("edit-run").isDisabled(), "instruct is offered without an instruction");
    await a.getByLabel("Instruction").fill("make it winter");
    await a.getByTestId("edit-run").click();
    await a.waitForFunction(() => document.querySelectorAll('[data-testid="edit-version"]').length === 4, null, { timeout: 120_000 });
    const instructed = await a.evaluate(async () => (await (await fetch("/api/jobs?kind=edit")).json()).items[0]);
    check(instructed.params.operation === "instruct" && instructed.params.model === "ip2p" && instructed.outputs[0].width === +want[1], `instruct: ${JSON.stringify(instructed.params)}`);
    // Erase what a stroke covers (the mask layer comes back clear for the new version).
    await a.getByRole("group", { name: "Operation" }).getByRole("button", { name: "Erase" }).click();
    const eraseBox = await a.getByTestId("edit-mask").boundingBox();
    await a.mouse.move(eraseBox.x + eraseBox.width * 0.3, eraseBox.y + eraseBox.height * 0.5);
    await a.mouse.down();
    await a.mouse.move(eraseBox.x + eraseBox.width * 0.6, eraseBox.y + eraseBox.height * 0.5, { steps: 6 });
    await a.mouse.up();
    await a.getByTestId("edit-run").click();
    await a.waitForFunction(() => document.querySelectorAll('[data-testid="edit-version"]').length === 5, null, { timeout: 120_000 });
    const erased = await a.evaluate(async () => (await (await fetch("/api/jobs?kind=edit")).json()).items[0].params);
    check(erased.operation === "erase" && erased.mask && !erased.prompt && erased.model === "lama", `erase: ${JSON.stringify(erased)}`);
    // Remove the background: a cut-out whose transparent pixels show the checkerboard.
    await a.getByRole("group", { name: "Operation" }).getByRole("button", { name: "Remove background" }).click();
    await a.getByTestId("edit-run").click();
    await a.waitForFunction(() => document.querySelectorAll('[data-testid="edit-version"]').length === 6, null, { timeout: 120_000 });
    const cut = await a.evaluate(async () => (await (await fetch("/api/jobs?kind=edit")).json()).items[0]);
    check(cut.params.operation === "remove_background" && cut.params.matte_model === "isnet", `remove background: ${JSON.stringify(cut.params)}`);
    await a.waitForFunction((id) => {
      const img = document.querySelector('[data-testid="edit-image"]');
      return img?.getAttribute("data-version") === id && img.complete && img.naturalWidth > 0;
    }, cut.outputs[0].id);
    // The least opaque pixel of the cut-out (a matte spans 0 to 1: at least one is clear).
    const clear = await a.getByTestId("edit-image").evaluate((img) => {
      const c = document.createElement("canvas");
      [c.width, c.height] = [img.naturalWidth, img.naturalHeight];
      const g = c.getContext("2d");
      g.drawImage(img, 0, 0);
      const d = g.getImageData(0, 0, c.width, c.height).data;
      let best = 0;
      for (let i = 0; i < d.length; i += 4) if (d[i + 3] < d[best + 3]) best = i;
      return { x: (best / 4) % c.width, y: Math.floor(best / 4 / c.width), alpha: d[best + 3], rgb: Array.from(d.slice(best, best + 3)), w: c.width, h: c.height };
    });
    check(clear.alpha === 0, `no transparent pixel in the cut-out: ${JSON.stringify(clear)}`);
    const shot = (await a.getByTestId("edit-canvas").screenshot()).toString("base64");
    const seen = await a.evaluate(async ({ shot, clear }) => {
      const img = new Image();
      img.src = `data:image/png;base64,${shot}`;
      await img.decode();
      const c = document.createElement("canvas");
      [c.width, c.height] = [img.naturalWidth, img.naturalHeight];
      const g = c.getContext("2d");
      g.drawImage(img, 0, 0);
      // The middle of the clear pixel, where the picture shows only what is behind it.
      const x = Math.floor(((clear.x + 0.5) * c.width) / clear.w);
      const y = Math.floor(((clear.y + 0.5) * c.height) / clear.h);
      return Array.from(g.getImageData(x, y, 1, 1).data.slice(0, 3));
    }, { shot, clear });
    // A checker square's grey (#3a3a3a or #5a5a5a), give or take the smoothing of the
    // scaled-up picture, and not the clear pixel's own colour.
    const near = (v, k, d) => Math.abs(v - k) <= d;
    const grey = seen.every((v) => near(v, seen[0], 6)) && [0x3a, 0x5a].some((k) => seen.every((v) => near(v, k, 10)));
    const own = clear.rgb.every((v, i) => near(v, seen[i], 20));
    check(grey && !own, `behind a clear pixel (its own colour rgb(${clear.rgb})): rgb(${seen}), not the checkerboard`);
    // Opened again from the gallery, the cut-out brings its lineage: all six versions.
    const o = cut.outputs[0];
    await a.goto(`/edit?asset=${o.id}&url=${encodeURIComponent(o.url)}&w=${o.width}&h=${o.height}`);
    await a.waitForFunction(() => document.querySelectorAll('[data-testid="edit-version"]').length === 6, null, { timeout: 10_000 });
    check((await a.getByTestId("edit-image").getAttribute("data-version")) === o.id, "the opened version is not the one shown");
    // Ctrl and the wheel zoom in.
    await a.getByTestId("edit-viewport").hover();
    await a.keyboard.down("Control");
    await a.mouse.wheel(0, -200);
    await a.keyboard.up("Control");
    await a.waitForFunction(() => document.querySelector('[data-testid="edit-zoom"]')?.textContent !== "100%");
    // And out again (the whole frame in view for what follows).
    await a.keyboard.down("Control");
    await a.mouse.wheel(0, 400);
    await a.keyboard.up("Control");
    await a.waitForFunction(() => document.querySelector('[data-testid="edit-zoom"]')?.textContent === "100%");
    // Outpaint by dragging the frame's right edge out: the result has the frame's size.
    await a.getByRole("group", { name: "Operation" }).getByRole("button", { name: "Outpaint" }).click();
    const edge = await a.getByTestId("edit-frame-right").boundingBox();
    await a.mouse.move(edge.x + edge.width / 2, edge.y + edge.height / 2);
    await a.mouse.down();
    await a.mouse.move(edge.x + edge.width / 2 + 60, edge.y + edge.height / 2, { steps: 4 });
    await a.mouse.up();
    const framed = (await a.getByTestId("edit-outpaint-size").textContent()).match(/(\d+) × (\d+) → (\d+) × (\d+)/);
    check(framed && +framed[3] > +framed[1], `the dragged frame: ${framed}`);
    await a.getByTestId("edit-run").click();
    await a.waitForFunction(() => document.querySelectorAll('[data-testid="edit-version"]').length === 7, null, { timeout: 120_000 });
    const wide = await a.evaluate(async () => (await (await fetch("/api/jobs?kind=edit")).json()).items[0]);
    check(wide.params.extend?.right > 0 && wide.outputs[0].width === +framed[3] && wide.outputs[0].height === +framed[4], `outpaint by the frame: ${JSON.stringify(wide.params)} → ${wide.outputs[0].width}×${wide.outputs[0].height}`);
    await a.screenshot({ path: join(shots, "edit-versions.png") });
  });

  await step("keyboard: the first Tab reaches the skip link", async () => {
    await b.goto("/feed");
    await b.getByTestId("feed-grid").waitFor();
    await b.keyboard.press("Tab");
    const focused = await b.evaluate(() => document.activeElement?.textContent);
    check(focused === "Skip to content", `focused: ${focused}`);
  });

  await step("screenshots of every page at 1440 and 390 px", async () => {
    const guest = await person(DESKTOP, "guest");
    // A signed-out visitor's pages make no failing requests (browsers log every 4xx).
    const failed = [];
    guest.page.on("response", (r) => {
      if (r.status() >= 400) failed.push(`${r.status()} ${r.url()}`);
    });
    for (const [path, ready] of [
      ["/feed", () => guest.page.getByTestId("feed-grid").waitFor()],
      ["/profile/ann", () => guest.page.getByTestId("feed-card").first().waitFor()],
      ["/login", () => guest.page.getByRole("button", { name: "Sign in" }).last().waitFor()],
    ]) {
      await guest.page.goto(path);
      await ready();
    }
    await guest.page.waitForLoadState("networkidle");
    check(failed.length === 0, `a guest's pages made failing requests:\n${failed.join("\n")}`);
    // A guest asking for a page of one's own signs in first, then gets there.
    await guest.page.goto("/app");
    await guest.page.waitForURL("**/login?next=%2Fapp");
    await shoot(guest.page, "login", () => guest.page.getByRole("button", { name: "Sign in" }).last().waitFor());
    await guest.page.getByLabel("Email", { exact: true }).fill("bob@example.com");
    await guest.page.getByLabel("Password", { exact: true }).fill("hunter2hunter2");
    await guest.page.getByRole("button", { name: "Sign in" }).last().click();
    await guest.page.waitForURL("**/app");
    await guest.context.close();
    const pages = [
      ["image", "/image", () => a.getByTestId("recent").locator("img").first().waitFor()],
      ["app", "/app", () => a.getByRole("img", { name: PROMPT }).waitFor()],
      ["feed", "/feed", () => a.getByTestId("feed-grid").waitFor()],
      ["feed-item", `/feed/${jobId}`, () => a.getByTestId("detail-outputs").locator("img").waitFor()],
      ["profile", "/profile/ann", () => a.getByTestId("feed-card").first().waitFor()],
      ["settings", "/settings", () => a.getByTestId("usage-credits-left").waitFor()],
      ["enhance", "/enhance", () => a.getByTestId("enhance-start").waitFor()],
      ["edit", "/edit", () => a.getByTestId("edit-run").waitFor()],
      ["admin", "/admin", () => a.getByTestId("accounts").waitFor()],
      ["realtime", "/realtime", () => a.getByTestId("live-output").waitFor({ timeout: 60_000 })],
    ];
    for (const [name, path, ready] of pages) {
      await a.goto(path);
      await shoot(a, name, ready);
    }
  });

  await step("dashboard: filter by model", async () => {
    await a.goto("/app");
    await a.getByRole("img", { name: PROMPT, exact: true }).waitFor();
    await a.getByLabel("Filter by model", { exact: true }).selectOption("sd-turbo");
    await a.getByText("Nothing matches.").waitFor();
    await a.getByLabel("Filter by model", { exact: true }).selectOption("tiny");
    await a.getByRole("img", { name: SKETCH, exact: true }).waitFor();
  });

  await step("the owner deletes it from the dashboard; it leaves the gallery", async () => {
    await a.getByRole("checkbox", { name: `Select: ${PROMPT}` }).check();
    await a.getByTestId("bulk-delete").click();
    await a.getByRole("dialog").getByRole("button", { name: "Delete" }).click();
    await a.getByRole("img", { name: PROMPT, exact: true }).waitFor({ state: "detached" });
    await a.getByRole("img", { name: SKETCH, exact: true }).waitFor();
    await b.goto("/feed");
    await b.getByText("Nothing has been shared yet.").waitFor();
    await b.goto(`/feed/${jobId}`);
    await b.getByText("not shared (any more)").waitFor();
  });

  await step("dashboard: more pages load as the end scrolls into view", async () => {
    const made = await a.evaluate(async () => {
      let ok = 0;
      for (let i = 0; i < 31; i++) {
        const r = await fetch("/api/generate/image", {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ prompt: `filler ${i}`, model: "tiny", steps: 1 }),
        });
        if (r.status === 202) ok++;
      }
      return ok;
    });
    check(made === 31, `submitted ${made} of 31`);
    await a.goto("/app");
    const cards = a.getByRole("list").first().getByRole("listitem");
    await a.waitForFunction(() => document.querySelectorAll("main ul > li").length === 30);
    await cards.last().scrollIntoViewIfNeeded();
    // 31 fillers, the sketch, the LoRA image, the enhanced image and the six edits.
    await a.waitForFunction(() => document.querySelectorAll("main ul > li").length === 40 + 1);
    await a.getByRole("img", { name: SKETCH, exact: true }).waitFor();
  });

  await step("train: five images captioned and one caption edited; it learns (loss chart, samples); its LoRA generates in /image", async () => {
    // Five small pictures, drawn by the browser.
    const pngs = await a.evaluate(() =>
      Array.from({ length: 5 }, (_, k) => {
        const c = document.createElement("canvas");
        c.width = 32 + 8 * (k % 3);
        c.height = 32;
        const x = c.getContext("2d");
        x.fillStyle = `hsl(${k * 70}, 80%, 50%)`;
        x.fillRect(0, 0, c.width, c.height);
        x.fillStyle = "#fff";
        x.fillRect(4 + k, 4, 12, 12);
        return c.toDataURL("image/png").split(",")[1];
      }),
    );
    const files = pngs.map((b64, k) => {
      const f = join(shots, `train-${k}.png`);
      writeFileSync(f, Buffer.from(b64, "base64"));
      return f;
    });
    await a.goto("/train");
    await a.getByLabel("Name", { exact: true }).fill("Squares");
    await a.getByLabel("Trigger word", { exact: true }).fill("zkx");
    await a.getByRole("group", { name: "What it learns" }).getByRole("button", { name: "Object" }).click();
    await a.getByLabel("Training images", { exact: true }).setInputFiles(files);
    await a.getByRole("img", { name: "Training image 5", exact: true }).waitFor();
    // Each is captioned by the (tiny) captioning model; one caption is then edited.
    await a.waitForFunction(() => {
      const boxes = [...document.querySelectorAll('[data-testid="train-images"] textarea')];
      return boxes.length === 5 && boxes.every((t) => t.value.length > 0);
    });
    await a.getByLabel("Caption 2", { exact: true }).fill("a white square on orange");
    await shoot(a, "train-new", () => a.getByTestId("train-images").waitFor());
    await a.getByRole("button", { name: "Advanced settings" }).click();
    for (const [label, value] of [
      ["Steps", "12"],
      ["Rank", "4"],
      ["Learning rate", "0.003"],
      ["Resolution", "32"],
    ]) {
      await a.getByLabel(label, { exact: true }).fill(value);
    }
    await a.getByTestId("train-start").click();
    await a.getByTestId("training").waitFor();
    await a.getByText("Done: 12 steps").waitFor({ timeout: 120_000 });
    const points = await a.getByTestId("loss-chart").getAttribute("data-points");
    check(points === "12", `the loss chart has ${points} points`);
    const sample = a.getByRole("img", { name: "Sample at step 12", exact: true });
    await sample.waitFor();
    await a.waitForFunction(() => document.querySelector('img[alt="Sample at step 12"]')?.naturalWidth === 32);
    const t = await a.evaluate(async () => (await (await fetch("/api/train/models")).json()).items[0]);
    check(t.params.images.length === 5 && t.params.images[1].caption === "a white square on orange", `the training's images: ${JSON.stringify(t.params.images)}`);
    check(t.params.trigger === "zkx" && t.params.preset === "object" && t.params.steps === 12, `params: ${JSON.stringify(t.params)}`);
    await shoot(a, "train", () => a.getByTestId("loss-chart").waitFor());
    const lora = t.outputs.find((o) => o.kind === "lora").id;
    await a.getByTestId("train-use").click();
    await a.waitForURL("**/image");
    await a.getByTestId(`lora-${lora}`).waitFor();
    const prompt = "zkx, a square";
    await a.getByLabel("Prompt", { exact: true }).fill(prompt);
    await a.getByTestId("generate").click();
    await a.waitForFunction((p) => document.querySelector('[data-testid="result-image"]')?.getAttribute("alt") === p, prompt, { timeout: 120_000 });
    const g = await a.evaluate(async () => (await (await fetch("/api/generate/images")).json()).items[0]);
    check(JSON.stringify(g.loras) === JSON.stringify([{ id: lora, weight: 1 }]), `loras: ${JSON.stringify(g.loras)}`);
  });

  check(uncaught.length === 0, `uncaught errors in the page:\n${uncaught.join("\n")}`);
  console.log("the studio works end to end");
} catch (e) {
  console.error(`FAILED at "${current}": ${e.message}\n${(e.stack ?? "").split("\n").filter((l) => l.includes("studio.mjs")).join("\n")}`);
  for (const [who, p] of [
    ["ann", ann?.page],
    ["bob", bob?.page],
  ]) {
    if (p) await p.screenshot({ path: join(shots, `failure-${who}.png`), fullPage: true }).catch(() => {});
  }
  if (uncaught.length) console.error(`uncaught errors in the page:\n${uncaught.join("\n")}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
