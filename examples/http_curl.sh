#!/usr/bin/env bash
# openarc-mcp over HTTP with curl. Start the server first (after `openarc-mcp models prepare`):
#   OPENARC_API_KEY=change-me openarc-mcp serve --transport http --port 8000
# then: OPENARC_API_KEY=change-me bash examples/http_curl.sh
set -euo pipefail
url=${OPENARC_URL:-http://127.0.0.1:8000}
auth="Authorization: Bearer ${OPENARC_API_KEY:?set OPENARC_API_KEY to the key the server was started with}"

echo "== liveness (no key needed) and readiness"
curl -sS "$url/healthz"; echo
curl -sS -H "$auth" "$url/readyz"; echo

echo "== models and devices"
curl -sS -H "$auth" "$url/v1/models"; echo
curl -sS -H "$auth" "$url/v1/devices"; echo

echo "== load a model (answers once it is ready; 409 if the name is in use), then unload it"
curl -sS -H "$auth" -H 'Content-Type: application/json' "$url/v1/models/load" \
  -d '{"model": "minilm-l6-cosine-reranker"}'; echo
curl -sS -H "$auth" -H 'Content-Type: application/json' "$url/v1/models/unload" \
  -d '{"model": "minilm-l6-cosine-reranker"}'; echo

echo "== chat completion"
curl -sS -H "$auth" -H 'Content-Type: application/json' "$url/v1/chat/completions" -d '{
  "model": "smollm2-135m-instruct",
  "messages": [{"role": "user", "content": "What is the capital of France?"}],
  "temperature": 0, "max_tokens": 32}'; echo

echo "== the same, streamed as server-sent events"
curl -sSN -H "$auth" -H 'Content-Type: application/json' "$url/v1/chat/completions" -d '{
  "model": "smollm2-135m-instruct",
  "messages": [{"role": "user", "content": "What is the capital of France?"}],
  "temperature": 0, "max_tokens": 32, "stream": true, "stream_options": {"include_usage": true}}'

echo "== JSON that matches a schema (response_format json_schema)"
curl -sS -H "$auth" -H 'Content-Type: application/json' "$url/v1/chat/completions" -d '{
  "model": "smollm2-135m-instruct",
  "messages": [{"role": "user", "content": "What is the capital of France? Answer in JSON with city and country."}],
  "temperature": 0, "max_tokens": 60,
  "response_format": {"type": "json_schema", "json_schema": {"name": "city", "schema": {
    "type": "object", "additionalProperties": false, "required": ["city", "country"],
    "properties": {"city": {"type": "string", "maxLength": 40}, "country": {"type": "string", "maxLength": 40}}}}}}'; echo

echo "== embeddings"
curl -sS -H "$auth" -H 'Content-Type: application/json' "$url/v1/embeddings" \
  -d '{"model": "all-minilm-l6-v2", "input": "hello", "dimensions": 8}'; echo

echo "== rerank"
curl -sS -H "$auth" -H 'Content-Type: application/json' "$url/v1/rerank" -d '{
  "model": "minilm-l6-cosine-reranker", "query": "capital of France",
  "documents": ["Bananas are yellow.", "Paris is the capital of France."]}'; echo

echo "== speech, then its transcription"
speech=$(mktemp --suffix=.wav)
curl -sS -H "$auth" -H 'Content-Type: application/json' "$url/v1/audio/speech" \
  -d '{"model": "kokoro-82m", "input": "Hello from a local model.", "response_format": "wav"}' -o "$speech"
curl -sS -H "$auth" "$url/v1/audio/transcriptions" -F file=@"$speech" -F model=whisper-base-int8 \
  -F response_format=verbose_json; echo
rm -f "$speech"

echo "== MCP over streamable HTTP: initialize"
curl -sS -H "$auth" -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' \
  "$url/mcp" -d '{"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "curl", "version": "1"}}}'
echo
