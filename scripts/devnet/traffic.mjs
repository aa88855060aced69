// Deploys the real Uniswap V3 contracts (npm artifacts) on a running anvil and generates
// seedable traffic: pools across fee tiers, swaps (batched through SwapRouter.multicall),
// mints in and out of range, increase/decrease liquidity, collects, NFT transfers and burns,
// and new pools created mid-run.
//
// usage: node traffic.mjs --rpc URL --modules DIR [--seed N] [--pools N] [--rounds N]
//          [--swaps-per-tx N] [--deploy-file FILE] [--out FILE]
// With --deploy-file pointing at an existing file, deployment is skipped and traffic is
// added to the contracts recorded there. Prints a JSON summary on stdout.
import { createRequire } from "node:module";
import fs from "node:fs";
import path from "node:path";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => {
    if (a.startsWith("--")) acc.push([a.slice(2), all[i + 1]]);
    return acc;
  }, []),
);
const modules = args.modules;
const require = createRequire(path.join(modules, "noop.js"));
const { ethers } = require("ethers");

const seed = Number(args.seed ?? 1);
const poolCount = Number(args.pools ?? 6);
const rounds = Number(args.rounds ?? 40);
const swapsPerTx = Number(args["swaps-per-tx"] ?? 20);

function artifact(rel) {
  const a = JSON.parse(fs.readFileSync(path.join(modules, rel), "utf8"));
  const bytecode = a.bytecode.startsWith("0x") ? a.bytecode : "0x" + a.bytecode;
  return { abi: a.abi, bytecode };
}
const A = {
  weth: artifact("@uniswap/v2-periphery/build/WETH9.json"),
  erc20: artifact("@uniswap/v2-core/build/ERC20.json"),
  factory: artifact("@uniswap/v3-core/artifacts/contracts/UniswapV3Factory.sol/UniswapV3Factory.json"),
  pool: artifact("@uniswap/v3-core/artifacts/contracts/UniswapV3Pool.sol/UniswapV3Pool.json"),
  npm: artifact(
    "@uniswap/v3-periphery/artifacts/contracts/NonfungiblePositionManager.sol/NonfungiblePositionManager.json",
  ),
  router: artifact("@uniswap/v3-periphery/artifacts/contracts/SwapRouter.sol/SwapRouter.json"),
};

// mulberry32: small, seedable, good enough for traffic shapes.
let state = seed >>> 0;
function rand() {
  state = (state + 0x6d2b79f5) >>> 0;
  let t = state;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const randInt = (lo, hi) => lo + Math.floor(rand() * (hi - lo + 1));
const pick = (xs) => xs[Math.floor(rand() * xs.length)];

const provider = new ethers.JsonRpcProvider(args.rpc, undefined, { batchMaxCount: 1, cacheTimeout: -1 });
provider.pollingInterval = 20;
const accounts = await provider.send("eth_accounts", []);
const signer = new ethers.JsonRpcSigner(provider, accounts[0]);
const others = accounts.slice(1, 4);
const MAX = ethers.MaxUint256;
const DEADLINE = 2n ** 40n;
// Explicit gas: estimates for multicalls that cross ticks come out short now and then.
const G = { gasLimit: 50_000_000 };
const FEES = [
  [500, 10],
  [3000, 60],
  [10000, 200],
];

async function send(txPromise) {
  const tx = await txPromise;
  // anvil automines: the receipt exists once the send returns. Polling it directly avoids
  // ethers' wait(), which was seen to hang on long runs.
  for (;;) {
    const r = await provider.getTransactionReceipt(tx.hash);
    if (r) {
      if (r.status !== 1) throw new Error(`tx ${tx.hash} reverted`);
      return r;
    }
    await new Promise((ok) => setTimeout(ok, 5));
  }
}
async function deploy(a, ...ctor) {
  const f = new ethers.ContractFactory(a.abi, a.bytecode, signer);
  const c = await f.deploy(...ctor);
  await c.waitForDeployment();
  return c;
}

let d;
if (args["deploy-file"] && fs.existsSync(args["deploy-file"])) {
  d = JSON.parse(fs.readFileSync(args["deploy-file"], "utf8"));
} else {
  const weth = await deploy(A.weth);
  const tokens = [];
  for (let i = 0; i < 8; i++) tokens.push(await (await deploy(A.erc20, 10n ** 36n)).getAddress());
  const factory = await deploy(A.factory);
  const factoryAddr = await factory.getAddress();
  const wethAddr = await weth.getAddress();
  const npm = await deploy(A.npm, factoryAddr, wethAddr, ethers.ZeroAddress);
  const router = await deploy(A.router, factoryAddr, wethAddr);
  d = {
    weth: wethAddr,
    tokens,
    factory: factoryAddr,
    position_manager: await npm.getAddress(),
    swap_router: await router.getAddress(),
    deploy_block: Number(await provider.getBlockNumber()),
    pools: [],
    positions: [],
  };
  for (const t of tokens) {
    const erc = new ethers.Contract(t, A.erc20.abi, signer);
    await send(erc.approve(d.position_manager, MAX));
    await send(erc.approve(d.swap_router, MAX));
  }
}

const factory = new ethers.Contract(d.factory, A.factory.abi, signer);
const npm = new ethers.Contract(d.position_manager, A.npm.abi, signer);
const router = new ethers.Contract(d.swap_router, A.router.abi, signer);
const npmIface = npm.interface;

function sqrtPriceAtTick(tick) {
  // Float is fine here: any sqrtPriceX96 in range is a valid initial price.
  const s = Math.sqrt(Math.pow(1.0001, tick));
  return BigInt(Math.floor(s * 2 ** 48)) * 2n ** 48n;
}

async function createPool() {
  for (let attempt = 0; attempt < 50; attempt++) {
    let [a, b] = [pick(d.tokens), pick(d.tokens)];
    if (a === b) continue;
    if (a.toLowerCase() > b.toLowerCase()) [a, b] = [b, a];
    const [fee, spacing] = pick(FEES);
    if (d.pools.some((p) => p.token0 === a && p.token1 === b && p.fee === fee)) continue;
    const tick = randInt(-3000, 3000);
    await send(npm.createAndInitializePoolIfNecessary(a, b, fee, sqrtPriceAtTick(tick), G));
    const pool = await factory.getPool(a, b, fee);
    const p = { address: pool, token0: a, token1: b, fee, spacing };
    d.pools.push(p);
    // A wide base position keeps every swap inside liquidity.
    const lo = Math.ceil(-887272 / spacing) * spacing;
    const hi = Math.floor(887272 / spacing) * spacing;
    await mint([{ p, lo, hi, amount: 10n ** 27n }], true);
    return p;
  }
  return null; // every (token pair, fee) has its pool already
}

async function currentTick(p) {
  const pool = new ethers.Contract(p.address, A.pool.abi, provider);
  return Number((await pool.slot0()).tick);
}

async function mint(specs, base = false) {
  const calls = specs.map(({ p, lo, hi, amount }) =>
    npmIface.encodeFunctionData("mint", [
      {
        token0: p.token0,
        token1: p.token1,
        fee: p.fee,
        tickLower: lo,
        tickUpper: hi,
        amount0Desired: amount,
        amount1Desired: amount,
        amount0Min: 0,
        amount1Min: 0,
        recipient: accounts[0],
        deadline: DEADLINE,
      },
    ]),
  );
  const r = await send(npm.multicall(calls, G));
  for (const log of r.logs) {
    if (log.address.toLowerCase() !== d.position_manager.toLowerCase()) continue;
    const ev = npmIface.parseLog(log);
    if (ev?.name === "IncreaseLiquidity") d.positions.push({ id: ev.args.tokenId.toString(), owner: accounts[0], base });
  }
}

async function randomPositions() {
  const specs = [];
  for (let i = 0; i < randInt(1, 4); i++) {
    const p = pick(d.pools);
    const t = await currentTick(p);
    const s = p.spacing;
    const center = Math.round(t / s) * s;
    // Some ranges straddle the price, some sit fully above or below it.
    const offset = pick([0, 0, 1, -1]) * randInt(2, 20) * s;
    const lo = center + offset - randInt(1, 30) * s;
    const hi = center + offset + randInt(1, 30) * s;
    specs.push({ p, lo, hi, amount: 10n ** BigInt(randInt(18, 22)) });
  }
  await mint(specs);
}

async function swaps(n) {
  const calls = [];
  for (let i = 0; i < n; i++) {
    const p = pick(d.pools);
    const zeroForOne = rand() < 0.5;
    calls.push(
      router.interface.encodeFunctionData("exactInputSingle", [
        {
          tokenIn: zeroForOne ? p.token0 : p.token1,
          tokenOut: zeroForOne ? p.token1 : p.token0,
          fee: p.fee,
          recipient: accounts[0],
          deadline: DEADLINE,
          amountIn: 10n ** BigInt(randInt(15, 20)) * BigInt(randInt(1, 9)),
          amountOutMinimum: 0,
          sqrtPriceLimitX96: 0,
        },
      ]),
    );
  }
  await send(router.multicall(calls, { gasLimit: 400_000 * n + 1_000_000 }));
}

// Base positions stay: without them a pool's price runs to the edge and swaps revert (SPL).
const mine = () => d.positions.filter((x) => x.owner === accounts[0] && !x.burned && !x.base);

async function positionOps() {
  const owned = mine();
  if (owned.length === 0) return;
  const pos = pick(owned);
  const info = await npm.positions(pos.id);
  const op = rand();
  if (op < 0.3) {
    await send(
      npm.increaseLiquidity({
        tokenId: pos.id,
        amount0Desired: 10n ** 19n,
        amount1Desired: 10n ** 19n,
        amount0Min: 0,
        amount1Min: 0,
        deadline: DEADLINE,
      }, G),
    );
  } else if (op < 0.6 && info.liquidity > 0n) {
    const amount = rand() < 0.3 ? info.liquidity : info.liquidity / 2n;
    await send(
      npm.decreaseLiquidity({ tokenId: pos.id, liquidity: amount, amount0Min: 0, amount1Min: 0, deadline: DEADLINE }, G),
    );
  } else if (op < 0.8) {
    const MAX128 = 2n ** 128n - 1n;
    await send(npm.collect({ tokenId: pos.id, recipient: accounts[0], amount0Max: MAX128, amount1Max: MAX128 }, G));
    const after = await npm.positions(pos.id);
    if (after.liquidity === 0n && after.tokensOwed0 === 0n && after.tokensOwed1 === 0n && rand() < 0.5) {
      await send(npm.burn(pos.id, G));
      pos.burned = true;
    }
  } else {
    const to = pick(others);
    await send(npm.transferFrom(accounts[0], to, pos.id, G));
    pos.owner = to;
  }
}

if (d.pools.length === 0) {
  for (let i = 0; i < poolCount; i++) await createPool();
}
for (let r = 0; r < rounds; r++) {
  const x = rand();
  if (x < 0.03) (await createPool()) ?? (await swaps(swapsPerTx));
  else if (x < 0.2) await randomPositions();
  else if (x < 0.35) await positionOps();
  else await swaps(swapsPerTx);
}

d.last_block = Number(await provider.getBlockNumber());
if (args.out) fs.writeFileSync(args.out, JSON.stringify(d, null, 2));
process.stdout.write(JSON.stringify({ pools: d.pools.length, positions: d.positions.length, last_block: d.last_block }) + "\n");
