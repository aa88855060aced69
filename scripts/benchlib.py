"""Helpers shared by the benchmark scripts' inline Python (imported with scripts/ on sys.path)."""
import json, time, urllib.request


def rpc(url, method, params):
    """One JSON-RPC call; raises on an error answer."""
    req = urllib.request.Request(url, json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode(), {"content-type": "application/json"})
    r = json.load(urllib.request.urlopen(req))
    if "error" in r:
        raise RuntimeError(r["error"])
    return r["result"]


def wait_for(seen, key, timeout=10):
    """Waits until another thread records `key` in the dict `seen`; returns its value."""
    end = time.perf_counter() + timeout
    while key not in seen:
        if time.perf_counter() > end:
            raise RuntimeError(f"{key} never seen")
        time.sleep(0.0002)
    return seen[key]
