"""The generations a server made, kept across restarts: one SQLite row each (the standard library's sqlite3) with
the prompt, parameters, seed and model, plus the output file (PNG / GIF) under FOLDER/files/."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

SCHEMA = """CREATE TABLE IF NOT EXISTS generations (
    id INTEGER PRIMARY KEY AUTOINCREMENT, created REAL NOT NULL, model TEXT NOT NULL, route TEXT NOT NULL,
    prompt TEXT, params TEXT NOT NULL, seed INTEGER, text TEXT, file TEXT)"""


class History:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.files = self.folder / "files"
        self.files.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.folder / "history.sqlite", check_same_thread=False)
        self.db.execute(SCHEMA)
        self.db.commit()
        self.lock = threading.Lock()

    def add(self, model: str, route: str, prompt: str | None, params: dict, seed: int | None,
            text: str | None = None, data: bytes | None = None, suffix: str = "") -> int:
        """Record one generation (its file's bytes written as FOLDER/files/ID.SUFFIX); returns its id."""
        with self.lock:
            cur = self.db.execute("INSERT INTO generations (created, model, route, prompt, params, seed, text) "
                                  "VALUES (?, ?, ?, ?, ?, ?, ?)",
                                  (time.time(), model, route, prompt, json.dumps(params), seed, text))
            gid = cur.lastrowid
            if data is not None:
                name = f"{gid}{suffix}"
                tmp = self.files / (name + ".tmp")
                tmp.write_bytes(data)
                tmp.replace(self.files / name)
                self.db.execute("UPDATE generations SET file = ? WHERE id = ?", (name, gid))
            self.db.commit()
        return gid

    def recent(self, limit: int = 50) -> list[dict]:
        with self.lock:
            rows = self.db.execute("SELECT id, created, model, route, prompt, params, seed, text, file FROM "
                                   "generations ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        keys = ("id", "created", "model", "route", "prompt", "params", "seed", "text", "file")
        return [{**dict(zip(keys, r)), "params": json.loads(r[5])} for r in rows]

    def file(self, name: str) -> Path | None:
        """The path of a recorded output file (only names this history wrote)."""
        with self.lock:
            row = self.db.execute("SELECT 1 FROM generations WHERE file = ?", (name,)).fetchone()
        path = self.files / name
        return path if row and path.is_file() else None

    def close(self) -> None:
        with self.lock:
            self.db.close()
