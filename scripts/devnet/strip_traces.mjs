// Removes the call traces from an anvil state dump (`--dump-state`), streaming: anvil keeps
// every mined transaction's full trace and writes it out, which is most of a busy chain's dump
// (11 of the 12 GB of the mainnet-shaped chain's, which anvil could not load again in 23 GB of
// memory). Blocks, receipts and logs stay; only `debug_trace*` on old blocks lose their answer.
//
// usage: node strip_traces.mjs IN OUT
// Every `"traces":[...]` becomes `"traces":[]`. The key cannot occur inside a JSON string (its
// quotes would be escaped there), so a byte search finds exactly the keys.
import fs from "node:fs";

const [input, output] = process.argv.slice(2);
if (!input || !output) {
  process.stderr.write("usage: node strip_traces.mjs IN OUT\n");
  process.exit(2);
}
const KEY = Buffer.from('"traces":[');
const inFd = fs.openSync(input, "r");
const outFd = fs.openSync(output, "w");
const buf = Buffer.alloc(64 << 20);
// Skipping a trace array: bracket depth, and whether inside a string (and after a backslash).
let skipping = false;
let depth = 0;
let inString = false;
let escaped = false;
// Bytes of a possible key cut by a read boundary, kept for the next read.
let carry = Buffer.alloc(0);
let readIn = 0;
let written = 0;
function write(b) {
  let off = 0;
  while (off < b.length) off += fs.writeSync(outFd, b, off, b.length - off);
  written += b.length;
}
for (;;) {
  const n = fs.readSync(inFd, buf, 0, buf.length, null);
  if (n === 0) break;
  readIn += n;
  const chunk = carry.length ? Buffer.concat([carry, buf.subarray(0, n)]) : buf.subarray(0, n);
  carry = Buffer.alloc(0);
  let i = 0;
  while (i < chunk.length) {
    if (!skipping) {
      const k = chunk.indexOf(KEY, i);
      if (k < 0) {
        // Keep a tail that could be the start of a key cut by the boundary.
        const keep = Math.min(KEY.length - 1, chunk.length - i);
        write(chunk.subarray(i, chunk.length - keep));
        carry = Buffer.from(chunk.subarray(chunk.length - keep));
        i = chunk.length;
        break;
      }
      write(chunk.subarray(i, k + KEY.length));
      i = k + KEY.length;
      skipping = true;
      depth = 1;
      inString = false;
      escaped = false;
      continue;
    }
    for (; i < chunk.length; i++) {
      const c = chunk[i];
      if (inString) {
        if (escaped) escaped = false;
        else if (c === 0x5c) escaped = true;
        else if (c === 0x22) inString = false;
      } else if (c === 0x22) inString = true;
      else if (c === 0x5b || c === 0x7b) depth++;
      else if (c === 0x5d || c === 0x7d) {
        depth--;
        if (depth === 0) {
          write(Buffer.from("]"));
          skipping = false;
          i++;
          break;
        }
      }
    }
  }
}
if (skipping) {
  process.stderr.write("strip_traces: the input ends inside a trace array\n");
  process.exit(1);
}
write(carry);
fs.closeSync(outFd);
fs.closeSync(inFd);
process.stderr.write(`strip_traces: ${readIn} bytes in, ${written} out\n`);
