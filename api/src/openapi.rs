//! The OpenAPI 3.1 document of the HTTP API, served at `/openapi.json`.

use serde_json::{json, Value};

fn block_param() -> Value {
    json!({"name": "block", "in": "query", "required": false,
           "description": "Block number (decimal); the head when absent. Must lie between the first indexed block and the head.",
           "schema": {"type": "integer", "minimum": 0}})
}

fn address_param(name: &str) -> Value {
    json!({"name": name, "in": "path", "required": true,
           "schema": {"type": "string", "pattern": "^0x[0-9a-fA-F]{40}$"}})
}

fn errors() -> Value {
    json!({
        "400": {"description": "Bad input (malformed address, token id or block; block out of range)", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
        "404": {"description": "Unknown pool or position", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    })
}

fn ok(schema: &str) -> Value {
    let mut r = errors();
    r["200"] = json!({"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
    r
}

/// The document.
pub(crate) fn document() -> Value {
    let dec =
        json!({"type": "string", "pattern": "^-?[0-9]+$", "description": "exact decimal integer"});
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Tidewater", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Uniswap V3 pool, tick and position state at the head and at past blocks; a live stream with reorg reverts; read-only SQL. Big integers are decimal strings."},
        "paths": {
            "/": {"get": {"summary": "The liquidity page (HTML): pools, a pool's distribution and positions with time travel and a live view, operations; it reads only this API", "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}}}},
            "/v1/tokens/{address}": {"get": {"summary": "An ERC-20's symbol() and decimals(), read from the node and cached (404 on serve, which has no node, or for a contract that does not answer)", "parameters": [address_param("address")], "responses": ok("Token")}},
            "/v1/pools": {"get": {"summary": "Every pool's state", "parameters": [block_param()], "responses": ok("PoolList")}},
            "/v1/pools/{address}": {"get": {"summary": "One pool's state", "parameters": [address_param("address"), block_param()], "responses": ok("Pool")}},
            "/v1/pools/{address}/ticks": {"get": {"summary": "Liquidity distribution: initialized ticks and the active liquidity of each interval", "parameters": [address_param("address"), block_param()], "responses": ok("Ticks")}},
            "/v1/positions": {"get": {"summary": "Position manager positions", "parameters": [block_param(), {"name": "pool", "in": "query", "required": false, "schema": {"type": "string"}}], "responses": ok("PositionList")}},
            "/v1/positions/{token_id}": {"get": {"summary": "One position", "parameters": [{"name": "token_id", "in": "path", "required": true, "schema": {"type": "string", "pattern": "^[0-9]+$"}}, block_param()], "responses": ok("Position")}},
            "/v1/owners/{address}/positions": {"get": {"summary": "Positions of an owner", "parameters": [address_param("address"), block_param()], "responses": ok("PositionList")}},
            "/v1/stream": {"get": {"summary": "Server-Sent Events: `snapshot` first (the head state), then `pending`, `confirmed` and `reverted` updates with increasing ids. Reconnect with Last-Event-ID to receive what was missed, reverts included; `resync` means the cursor is too old.",
                "parameters": [{"name": "pools", "in": "query", "required": false, "description": "comma-separated pool addresses", "schema": {"type": "string"}},
                               {"name": "Last-Event-ID", "in": "header", "required": false, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "event stream", "content": {"text/event-stream": {"schema": {"$ref": "#/components/schemas/StreamEvent"}}}}, "400": errors()["400"], "404": errors()["404"]}}},
            "/v1/sql": {"post": {"summary": "Read-only SQL (DataFusion) over every table: cold Parquet plus the hot buffer, with a `confirmed` column",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["sql"], "properties": {"sql": {"type": "string"}}}}, "text/plain": {"schema": {"type": "string"}}}},
                "responses": {"200": {"description": "rows", "content": {"application/json": {"schema": {"type": "object", "properties": {"row_count": {"type": "integer"}, "rows": {"type": "array", "items": {"type": "object"}}}}}}},
                              "400": {"description": "bad SQL"}, "403": {"description": "not a read"}, "408": {"description": "over the time limit"}, "413": {"description": "over the row or memory limit"}, "429": {"description": "every query slot stayed busy for the whole time limit"}}}},
            "/health": {"get": {"summary": "Liveness", "responses": {"200": {"description": "the process serves"}}}},
            "/ready": {"get": {"summary": "Readiness: 503 while catching up with the head", "responses": {"200": {"description": "ready"}, "503": {"description": "catching up"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text format 0.0.4", "content": {"text/plain": {}}}}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1"}}}}
        },
        "components": {"schemas": {
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
            "Token": {"type": "object", "required": ["address", "symbol", "decimals"], "properties": {"address": {"type": "string"}, "symbol": {"type": "string"}, "decimals": {"type": "integer", "minimum": 0, "maximum": 255}}},
            "Block": {"type": "object", "properties": {"number": {"type": "integer"}, "hash": {"type": "string"}, "confirmed": {"type": "boolean"}}},
            "Pool": {"type": "object", "properties": {
                "address": {"type": "string"}, "token0": {"type": "string"}, "token1": {"type": "string"},
                "fee": {"type": "integer"}, "tick_spacing": {"type": "integer"}, "sqrt_price_x96": dec, "tick": {"type": "integer"},
                "liquidity": dec, "block": {"$ref": "#/components/schemas/Block"}}},
            "PoolList": {"type": "object", "properties": {"block": {"$ref": "#/components/schemas/Block"}, "pools": {"type": "array", "items": {"$ref": "#/components/schemas/Pool"}}}},
            "Ticks": {"type": "object", "properties": {
                "pool": {"type": "string"}, "block": {"$ref": "#/components/schemas/Block"}, "tick": {"type": "integer"}, "liquidity": dec,
                "ticks": {"type": "array", "items": {"type": "object", "properties": {"tick": {"type": "integer"}, "liquidity_gross": dec, "liquidity_net": dec}}},
                "intervals": {"type": "array", "items": {"type": "object", "properties": {"tick_lower": {"type": "integer"}, "tick_upper": {"type": "integer"}, "liquidity": dec}}}}},
            "Position": {"type": "object", "properties": {"token_id": dec, "owner": {"type": "string"}, "pool": {"type": ["string", "null"]},
                "tick_lower": {"type": "integer"}, "tick_upper": {"type": "integer"}, "liquidity": dec}},
            "PositionList": {"type": "object", "properties": {"block": {"$ref": "#/components/schemas/Block"}, "positions": {"type": "array", "items": {"$ref": "#/components/schemas/Position"}}}},
            "StreamEvent": {"type": "object", "properties": {"id": {"type": "integer"}, "status": {"enum": ["pending", "confirmed", "reverted"]},
                "block": {"type": "object", "properties": {"number": {"type": "integer"}, "hash": {"type": "string"}, "parent_hash": {"type": "string"}}},
                "pools": {"type": "array"}, "ticks": {"type": "array"}, "positions": {"type": "array"}}}
        }}
    })
}
