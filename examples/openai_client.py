"""Use openarc-mcp's OpenAI-compatible REST API with the official `openai` client, unmodified.

Start the server first (after `openarc-mcp models prepare`):

    OPENARC_API_KEY=change-me openarc-mcp serve --transport http --port 8000

then:

    OPENARC_API_KEY=change-me python examples/openai_client.py
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import openai

LLM = "smollm2-135m-instruct"
EMBEDDER = "all-minilm-l6-v2"
TTS = "kokoro-82m"
WHISPER = "whisper-base-int8"


def main() -> None:
    base_url = os.environ.get("OPENARC_URL", "http://127.0.0.1:8000/v1")
    with openai.OpenAI(base_url=base_url, api_key=os.environ.get("OPENARC_API_KEY", "none")) as client:
        _say("models: " + ", ".join(model.id for model in client.models.list()))

        _say("chat, streamed: ", end="")
        stream = client.chat.completions.create(
            model=LLM,
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            temperature=0,
            max_tokens=64,
            stream=True,
        )
        for chunk in stream:
            if chunk.choices:
                _say(chunk.choices[0].delta.content or "", end="")
        _say("")

        weather: Any = {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The current weather in a city.",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
        messages: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
        reply = client.chat.completions.create(
            model=LLM,
            messages=messages,
            tools=[weather],
            tool_choice="required",
            parallel_tool_calls=False,
            temperature=0,
        )
        messages.append(reply.choices[0].message)  # the reply goes back as the client returned it
        for call in reply.choices[0].message.tool_calls or []:
            if call.type == "function":
                _say(f"tool call: {call.function.name}({call.function.arguments})")
                result = "18 degrees Celsius and sunny"  # what the function would return
                messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
        answer = client.chat.completions.create(
            model=LLM, messages=messages, tools=[weather], tool_choice="none", temperature=0, max_tokens=60
        )
        _say(f"answer with the tool's result: {answer.choices[0].message.content}")

        vectors = client.embeddings.create(model=EMBEDDER, input=["Paris is in France.", "Cats purr."])
        _say(f"embeddings: {len(vectors.data)} x {len(vectors.data[0].embedding)}")

        speech = client.audio.speech.create(model=TTS, input="Hello from a local model.", voice="alloy")
        path = Path(tempfile.gettempdir()) / "openarc-speech.mp3"  # MP3 unless response_format says
        path.write_bytes(speech.content)
        _say(f"speech: {len(speech.content)} bytes of MP3 in {path}")

        with path.open("rb") as audio:
            # the language named: detection on a short clip of an accented voice can guess wrong
            transcript = client.audio.transcriptions.create(model=WHISPER, file=audio, language="en")
        _say(f"transcribed back: {transcript.text}")


def _say(text: str, end: str = "\n") -> None:
    sys.stdout.write(text + end)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
