// Writes a brotli (.br) and a gzip (.gz) copy beside every text file of a build, at the
// strongest settings (once, at build time), for the server to send to browsers that
// accept them. Node's own zlib: nothing to install.
//   node scripts/compress.mjs <dist>
import { readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { brotliCompressSync, constants, gzipSync } from "node:zlib";

const TEXT = /\.(html|js|mjs|css|svg|json|map|txt|webmanifest)$/;

function walk(dir) {
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) walk(path);
    else if (TEXT.test(name)) {
      const bytes = readFileSync(path);
      if (bytes.length < 256) continue;
      const br = brotliCompressSync(bytes, {
        params: { [constants.BROTLI_PARAM_QUALITY]: 11, [constants.BROTLI_PARAM_SIZE_HINT]: bytes.length },
      });
      const gz = gzipSync(bytes, { level: 9 });
      // Only where it pays.
      if (br.length < bytes.length) writeFileSync(`${path}.br`, br);
      if (gz.length < bytes.length) writeFileSync(`${path}.gz`, gz);
    }
  }
}

walk(process.argv[2]);
