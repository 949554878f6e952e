from pathlib import Path


def report_write(results, out: Path, stem: str) -> Path:
    path = out / f"{stem}.md"
    path.write_text("stub\n")
    return path
