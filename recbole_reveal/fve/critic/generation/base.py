"""The base types every generation backend shares: the item to answer, the answer, the critic's one user
turn, and the per-item answer log that makes a killed critic stage resume with identical results.

Batches are fixed slices of the full item list, whoever runs them and whatever was done before, so the
answers of an item never depend on how a run was split or resumed. Every answer is appended to an
:class:`AnswerLog` as soon as its batch (or request) finishes: a killed critic stage resumes at the next
unanswered item with identical results.
"""

import hashlib
import json
import os
import threading
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class GenerationItem:
    """One item to answer: its position in the critic's request list, its image and the instruction."""

    index: int
    item_id: str
    image_path: str
    text: str


@dataclass
class Answer:
    """A generated answer; ``finished``: it ended on its own (not at the token limit); ``error``: why no
    generation could run for the item (its image is unusable), else None; ``invalid``: why the reply
    holds no answer text (e.g. a server's ``message.content`` that is a number), else None: such an
    answer is logged and rejected like a malformed one."""

    text: str
    finished: bool
    error: str = None
    invalid: str = None


def user_turn(text, image_part):
    """The critic's one user turn: the instruction first, then the image."""
    return [{"role": "user", "content": [{"type": "text", "text": text}, image_part]}]


def item_key(identity, item):
    """What an answer depends on: the backend's identity, the instruction, and the image file (path,
    size, modification time); an answer logged under another key is regenerated."""
    try:
        st = os.stat(item.image_path)
        stamp = f"{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        stamp = "missing"
    blob = json.dumps([identity, item.text, item.image_path, stamp], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class AnswerLog:
    """Answers per item as JSON lines in ``folder`` (``<writer>.jsonl``; parallel workers write one file
    each), appended and flushed to disk as they come; ``folder=None`` keeps them in memory only."""

    def __init__(self, folder=None, writer="answers"):
        self.folder, self.writer = folder, writer
        self._memory = []
        self._lock = threading.Lock()

    def append(self, results, keys):
        """Append ``[(item, Answer)]``; ``keys`` maps an item index to its :func:`item_key`."""
        lines = [json.dumps(dict(asdict(answer), index=item.index, item_id=item.item_id, key=keys[item.index]))
                 for item, answer in results]
        with self._lock:
            if self.folder is None:
                self._memory += lines
                return
            os.makedirs(self.folder, exist_ok=True)
            path = os.path.join(self.folder, f"{self.writer}.jsonl")
            with open(path, "a+b") as f:
                cut = False
                if f.seek(0, os.SEEK_END) > 0:
                    f.seek(-1, os.SEEK_END)
                    cut = f.read(1) != b"\n"
                # a line cut short by a kill stays alone on its line (and is ignored when read)
                f.write(("\n" if cut else "").encode() + "".join(line + "\n" for line in lines).encode())
                f.flush()
                os.fsync(f.fileno())

    def load(self, keys):
        """``{index: Answer}`` of the logged answers whose key matches ``keys`` (a line cut short by a
        kill, or logged for another request, is ignored; a logged text that is not a string, as an
        earlier version logged a server's non-text content, is read as an ``invalid`` answer)."""
        lines = list(self._memory)
        if self.folder is not None and os.path.isdir(self.folder):
            for name in sorted(os.listdir(self.folder)):
                if name.endswith(".jsonl"):
                    with open(os.path.join(self.folder, name), encoding="utf-8") as f:
                        lines += f.read().split("\n")
        answers = {}
        for line in lines:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(rec, dict) or keys.get(rec.get("index")) != rec.get("key"):
                continue
            text, invalid = rec.get("text"), rec.get("invalid")
            if not isinstance(text, str):
                invalid = invalid or f"the logged text is {type(text).__name__} {json.dumps(text)[:80]}, not text"
                text = ""
            answers[rec["index"]] = Answer(text, rec.get("finished") is True, rec.get("error"), invalid)
        return answers


def fixed_batches(items, batch_size):
    """The batches of ``items`` (in order), ``batch_size`` each: the same whoever runs them."""
    return [items[k:k + batch_size] for k in range(0, len(items), batch_size)]
