// A chain with mainnet's shape, on a running anvil, with the real Uniswap V3 contracts:
// thousands of factory pools (most quiet, a few hundred busy), hundreds of other contracts
// (ERC20 transfers and approvals) and a spoofer that emits Uniswap V3 pool events from an
// address the factory never created, blocks of hundreds of logs whose blooms are mostly set,
// and long empty stretches.
//
// Built for speed on anvil, which hashes its whole state again for every block it mines: the
// long empty stretch is mined while the state is small (after the contracts, before the pools:
// tens of thousands of blocks a second, against ~20 a second over 5,000 pools), the addresses
// that receive tokens come from fixed sets (the state stops growing; a block still names
// hundreds of distinct ones, so its bloom stays mostly set), and each block's calls are encoded
// while the previous one is mined. devnet.sh runs it on the Cancun rules: Prague's history
// contract writes a slot a block, so an empty block's cost grows with the chain.
//
// usage: node mainnet_shape.mjs --rpc URL --modules DIR [--seed N] [--pools N] [--hot N]
//          [--noise N] [--watched-logs N] [--logs-per-block N] [--sparse N] [--out FILE]
// Prints a JSON summary on stdout.
import { createRequire } from "node:module";
import fs from "node:fs";
import path from "node:path";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => {
    if (a.startsWith("--")) acc.push([a.slice(2), all[i + 1]]);
    return acc;
  }, []),
);
const require = createRequire(path.join(args.modules, "noop.js"));
const { ethers } = require("ethers");

const seed = Number(args.seed ?? 1);
const poolTarget = Number(args.pools ?? 5000);
const hotCount = Number(args.hot ?? 300);
const noiseCount = Number(args.noise ?? 200);
const watchedTarget = Number(args["watched-logs"] ?? 1_000_000);
const perBlock = Number(args["logs-per-block"] ?? 300);
const sparse = Number(args.sparse ?? 100_000);

let state = seed >>> 0;
function rand() {
  state = (state + 0x6d2b79f5) >>> 0;
  let t = state;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const randInt = (lo, hi) => lo + Math.floor(rand() * (hi - lo + 1));
// A fresh address: every one is a new input to the block's bloom, as on mainnet.
const randAddress = () => "0x" + Array.from({ length: 20 }, () => randInt(0, 255).toString(16).padStart(2, "0")).join("");
const pick = (xs) => xs[Math.floor(rand() * xs.length)];
// Who receives swapped tokens and noise transfers: fixed sets, so balances stop adding slots.
const recipients = Array.from({ length: 1024 }, randAddress);
const noiseAddresses = Array.from({ length: 256 }, randAddress);

function artifact(rel) {
  const a = JSON.parse(fs.readFileSync(path.join(args.modules, rel), "utf8"));
  return { abi: a.abi, bytecode: a.bytecode.startsWith("0x") ? a.bytecode : "0x" + a.bytecode };
}
const A = {
  weth: artifact("@uniswap/v2-periphery/build/WETH9.json"),
  erc20: artifact("@uniswap/v2-core/build/ERC20.json"),
  factory: artifact("@uniswap/v3-core/artifacts/contracts/UniswapV3Factory.sol/UniswapV3Factory.json"),
  pool: artifact("@uniswap/v3-core/artifacts/contracts/UniswapV3Pool.sol/UniswapV3Pool.json"),
  npm: artifact("@uniswap/v3-periphery/artifacts/contracts/NonfungiblePositionManager.sol/NonfungiblePositionManager.json"),
  router: artifact("@uniswap/v3-periphery/artifacts/contracts/SwapRouter.sol/SwapRouter.json"),
};
const I = Object.fromEntries(Object.entries(A).map(([k, v]) => [k, new ethers.Interface(v.abi)]));

let nextId = 1;
async function rpc(method, params = []) {
  const r = await fetch(args.rpc, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ jsonrpc: "2.0", id: nextId++, method, params }),
  });
  const j = await r.json();
  if (j.error) throw new Error(`${method}: ${JSON.stringify(j.error)}`);
  return j.result;
}
const hex = (n) => "0x" + BigInt(n).toString(16);
const [me, ...others] = await rpc("eth_accounts");
// Transactions go into the pool and are mined together: blocks of many transactions.
await rpc("evm_setAutomine", [false]);
let nonce = Number(await rpc("eth_getTransactionCount", [me, "pending"]));
const pending = [];
function send(to, data, gas) {
  const tx = { from: me, data, gas: hex(gas), nonce: hex(nonce++) };
  if (to) tx.to = to;
  pending.push(rpc("eth_sendTransaction", [tx]));
}
async function mine() {
  const hashes = await Promise.all(pending.splice(0));
  do await rpc("evm_mine");
  while (Number((await rpc("txpool_status")).pending) > 0);
  return hashes;
}
// Empty blocks, a thousand per call: one call for tens of thousands outlasts HTTP timeouts.
async function mineEmpty(n) {
  for (let done = 0; done < n; done += 1000) await rpc("anvil_mine", [hex(Math.min(1000, n - done))]);
}
async function receipt(h) {
  const r = await rpc("eth_getTransactionReceipt", [h]);
  if (!r || r.status !== "0x1") throw new Error(`tx ${h} failed`);
  return r;
}
async function deploy(a, ctorArgs = [], gas = 3_000_000) {
  const data = a.bytecode + new ethers.Interface(a.abi).encodeDeploy(ctorArgs).slice(2);
  send(null, data, gas);
}

// 1. Contracts: WETH, the tokens (the noise contracts too), the spoofer, Uniswap V3.
await deploy(A.weth);
for (let i = 0; i < noiseCount; i++) await deploy(A.erc20, [10n ** 36n]);
// The spoofer: LOG3(calldata[96:], topic0 = calldata[0:32], calldata[32:64], calldata[64:96]).
const spooferRuntime = "60603603806060600037604035602035600035836000a300";
send(null, "0x6018" + "80" + "600b" + "6000" + "39" + "6000" + "f3" + spooferRuntime, 200_000);
let hashes = await mine();
const addrs = [];
for (const h of hashes) addrs.push((await receipt(h)).contractAddress);
const weth = addrs[0];
const tokens = addrs.slice(1, 1 + noiseCount);
const spoofer = addrs[1 + noiseCount];
await deploy(A.factory, [], 30_000_000);
hashes = await mine();
const factory = (await receipt(hashes[0])).contractAddress;
await deploy(A.npm, [factory, weth, ethers.ZeroAddress], 30_000_000);
await deploy(A.router, [factory, weth], 30_000_000);
hashes = await mine();
const npm = (await receipt(hashes[0])).contractAddress;
const router = (await receipt(hashes[1])).contractAddress;
const deployBlock = Number(await rpc("eth_blockNumber"));
// The long empty stretch, while the state is small (factory and periphery only): inside the
// range a backfill from the factory's block reads.
await mineEmpty(sparse);
const MAX = ethers.MaxUint256;
// Pools pair the first tokens only, so enough pairs exist: n(n-1)/2 * 3 fee tiers.
let pairTokens = 2;
while ((pairTokens * (pairTokens - 1) / 2) * 3 < poolTarget) pairTokens++;
const poolTokens = tokens.slice(0, Math.min(pairTokens, tokens.length)).sort((a, b) => (a.toLowerCase() < b.toLowerCase() ? -1 : 1));
for (const t of poolTokens) {
  send(t, I.erc20.encodeFunctionData("approve", [npm, MAX]), 100_000);
  send(t, I.erc20.encodeFunctionData("approve", [router, MAX]), 100_000);
}
await mine();

// 2. Pools in bulk, then their prices.
const FEES = [[500, 10], [3000, 60], [10000, 200]];
const specs = [];
for (let i = 0; i < poolTokens.length && specs.length < poolTarget; i++)
  for (let j = i + 1; j < poolTokens.length && specs.length < poolTarget; j++)
    for (const [fee, spacing] of FEES) if (specs.length < poolTarget) specs.push({ token0: poolTokens[i], token1: poolTokens[j], fee, spacing });
for (let i = specs.length - 1; i > 0; i--) {
  const j = Math.floor(rand() * (i + 1));
  [specs[i], specs[j]] = [specs[j], specs[i]];
}
const perCreateBlock = 150;
for (let i = 0; i < specs.length; i += perCreateBlock) {
  for (const s of specs.slice(i, i + perCreateBlock)) send(factory, I.factory.encodeFunctionData("createPool", [s.token0, s.token1, s.fee]), 6_000_000);
  await mine();
}
const created = await rpc("eth_getLogs", [{ address: factory, fromBlock: hex(deployBlock), toBlock: "latest" }]);
const pools = created.map((l) => {
  const ev = I.factory.parseLog(l);
  return { address: ev.args.pool, token0: ev.args.token0, token1: ev.args.token1, fee: Number(ev.args.fee), spacing: Number(ev.args.tickSpacing) };
});
function sqrtPriceAtTick(tick) {
  return BigInt(Math.floor(Math.sqrt(Math.pow(1.0001, tick)) * 2 ** 48)) * 2n ** 48n;
}
for (let i = 0; i < pools.length; i += 1000) {
  for (const p of pools.slice(i, i + 1000)) send(p.address, I.pool.encodeFunctionData("initialize", [sqrtPriceAtTick(randInt(-3000, 3000))]), 200_000);
  await mine();
}
// The busy few get a wide position; the quiet many see a mint now and then.
const hot = pools.slice(0, hotCount);
const DEADLINE = 2n ** 40n;
function mintCall(p, lo, hi, amount) {
  return I.npm.encodeFunctionData("mint", [{
    token0: p.token0, token1: p.token1, fee: p.fee, tickLower: lo, tickUpper: hi,
    amount0Desired: amount, amount1Desired: amount, amount0Min: 0, amount1Min: 0, recipient: me, deadline: DEADLINE,
  }]);
}
const wide = (p) => [Math.ceil(-887272 / p.spacing) * p.spacing, Math.floor(887272 / p.spacing) * p.spacing];
for (let i = 0; i < hot.length; i += 50) {
  const calls = hot.slice(i, i + 50).map((p) => mintCall(p, ...wide(p), 10n ** 27n));
  send(npm, I.npm.encodeFunctionData("multicall", [calls]), 50 * 600_000);
  await mine();
}

// 3. Traffic: busy blocks of swaps (mostly on the busy pools), mints on quiet pools, noise
// transfers and approvals, spoofed Swap logs; short empty gaps in between.
const swapTopic = I.pool.getEvent("Swap").topicHash;
const word = (x) => BigInt(x).toString(16).padStart(64, "0");
// exactInputSingle's parameters are all static words: encoded by hand, 100x faster than ethers.
const exactInputSingle = I.router.getFunction("exactInputSingle").selector;
function swapCall(p) {
  const zeroForOne = rand() < 0.5;
  const amountIn = 10n ** BigInt(randInt(15, 19)) * BigInt(randInt(1, 9));
  return exactInputSingle + word(zeroForOne ? p.token0 : p.token1) + word(zeroForOne ? p.token1 : p.token0) +
    word(p.fee) + word(pick(recipients)) + word(DEADLINE) + word(amountIn) + word(0) + word(0);
}
// Zipf-like: pool k of the busy ones is picked with weight 1/(k+1).
const weights = hot.map((_, k) => 1 / (k + 1));
const total = weights.reduce((a, b) => a + b, 0);
function busyPool() {
  let x = rand() * total;
  for (let k = 0; k < hot.length; k++) if ((x -= weights[k]) <= 0) return hot[k];
  return hot[hot.length - 1];
}
let watched = 0;
let blocks = 0;
const started = Date.now();
while (watched < watchedTarget) {
  // ~perBlock watched logs: swaps in multicalls of 100, a few quiet-pool mints (4 watched logs).
  let inBlock = 0;
  while (inBlock < perBlock - 40) {
    const calls = [];
    for (let i = 0; i < 100; i++) calls.push(swapCall(busyPool()));
    send(router, I.router.encodeFunctionData("multicall", [calls]), 100 * 220_000);
    inBlock += 100;
  }
  for (let i = 0; i < 4; i++) {
    const p = pick(pools);
    send(npm, mintCall(p, -randInt(1, 40) * p.spacing, randInt(1, 40) * p.spacing, 10n ** 18n), 800_000);
    inBlock += 4;
  }
  // Noise: transfers and approvals on many tokens, and the spoofer's fake swaps.
  for (let i = 0; i < 60; i++) {
    const t = pick(tokens);
    if (rand() < 0.5) send(t, I.erc20.encodeFunctionData("approve", [pick(noiseAddresses), randInt(1, 1e9)]), 100_000);
    else send(t, I.erc20.encodeFunctionData("transfer", [pick(noiseAddresses), 1]), 100_000);
  }
  for (let i = 0; i < 5; i++) {
    const data = swapTopic + word(me) + word(pick(others)) + word(1) + word(2) + word(2n ** 96n) + word(1) + word(0);
    send(spoofer, data, 100_000);
  }
  await mine();
  watched += inBlock;
  blocks++;
  // Short gaps inside the busy part too (each empty block costs a hash of the whole state).
  if (blocks % 25 === 0) await mineEmpty(5);
  if (blocks % 200 === 0) {
    const rate = blocks / ((Date.now() - started) / 1000);
    process.stderr.write(`mainnet-shape: ${blocks} busy blocks, ~${watched} watched logs, ${rate.toFixed(2)} blocks/s\n`);
  }
}
await rpc("evm_setAutomine", [true]);
const last = Number(await rpc("eth_blockNumber"));
const d = {
  weth, tokens: poolTokens, noise: tokens, spoofer, factory, position_manager: npm, swap_router: router,
  deploy_block: deployBlock, pools: pools.map((p) => ({ ...p })), hot: hot.map((p) => p.address),
  positions: [], last_block: last, busy_blocks: blocks, approx_watched_logs: watched,
};
if (args.out) fs.writeFileSync(args.out, JSON.stringify(d));
process.stdout.write(JSON.stringify({ pools: pools.length, busy_blocks: blocks, approx_watched_logs: watched, last_block: last }) + "\n");
