"""Loaders on real files of every supported type; bad files are skipped and reported, never fatal."""

from __future__ import annotations

import json
from pathlib import Path

from rolora.retrieval.loaders import iter_corpus, load_path


def _pdf_bytes(text: str) -> bytes:
    """A minimal valid one-page PDF with ``text`` in Helvetica (offsets in the xref are computed)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objs, start=1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode()
    for off in offsets:
        out += f"{off:010d} 00000 n \n".encode()
    out += f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def make_mixed_corpus(root: Path) -> None:
    import docx

    root.mkdir(parents=True, exist_ok=True)
    (root / "plain.txt").write_text("1. Term\nThe term is three years.\r\n2. Law\nDelaware law applies.\n")
    (root / "notes.md").write_text("# Payment\nInvoices are due in thirty days.\n")
    (root / "page.html").write_text(
        "<html><head><title>T</title><style>.x{color:red}</style><script>var secret=1;</script></head>"
        "<body><h1>Renewal</h1><p>The agreement renews for one-year terms.</p></body></html>"
    )
    d = docx.Document()
    d.add_paragraph("Confidentiality. Each party keeps the other's information secret.")
    d.save(str(root / "memo.docx"))
    (root / "scan.pdf").write_bytes(_pdf_bytes("Limitation of liability is capped at fees paid."))
    (root / "records.jsonl").write_text(
        json.dumps({"id": "rec-1", "text": "Assignment requires prior written consent.", "metadata": {"kind": "x"}})
        + "\nnot json\n"
        + json.dumps({"id": "rec-2", "text": "Audit rights once per year."})
        + "\n"
        + json.dumps({"id": "rec-3"})
        + "\n"
    )
    (root / "binary.txt").write_bytes(b"\x00\x01\x02binary")
    (root / "empty.txt").write_bytes(b"")
    (root / "latin1.txt").write_bytes("Caf\xe9 terms: net 30.".encode("latin-1"))
    (root / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (root / ".hidden.txt").write_text("never ingested")


def test_each_loader_and_each_skip(tmp_path: Path) -> None:
    make_mixed_corpus(tmp_path)
    docs, skipped = {}, {}
    for f in iter_corpus(tmp_path, ["**/*"], []):
        res = load_path(f, tmp_path, max_bytes=10_000_000)
        for d in res.documents:
            docs[d.doc_id] = d
        for s in res.skipped:
            skipped[Path(s.path.split(":")[0]).name] = s.reason
    assert docs["plain"].text == "1. Term\nThe term is three years.\n2. Law\nDelaware law applies.\n"
    assert docs["notes"].text.startswith("# Payment")
    html = docs["page"].text
    assert "Renewal" in html and "renews for one-year" in html and "secret" not in html and "color" not in html
    assert "Confidentiality" in docs["memo"].text
    assert "capped at fees paid" in docs["scan"].text
    assert docs["rec-1"].metadata["kind"] == "x" and docs["rec-2"].text.startswith("Audit")
    assert docs["latin1"].flags == ("invalid-utf8",) and "\ufffd" in docs["latin1"].text
    assert "binary" in skipped["binary.txt"] and "empty" in skipped["empty.txt"]
    assert "PDF" in skipped["broken.pdf"] and "unsupported" in skipped["image.png"]
    assert "invalid JSON" in skipped["records.jsonl"] or "needs" in skipped["records.jsonl"]
    assert "hidden" not in docs and ".hidden" not in docs


def test_oversized_file_is_skipped_with_the_setting_to_change(tmp_path: Path) -> None:
    big = tmp_path / "big.txt"
    big.write_text("x " * 5000)
    res = load_path(big, tmp_path, max_bytes=1000)
    assert not res.documents and "retrieval.max_file_mb" in res.skipped[0].reason


def test_include_exclude_globs(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    for name in ("a.txt", "qa.jsonl", "sub/b.md", "sub/c.txt"):
        (tmp_path / name).write_text("text")
    got = [p.relative_to(tmp_path).as_posix() for p in iter_corpus(tmp_path, ["**/*.txt", "*.md"], ["qa*.jsonl"])]
    assert got == ["a.txt", "sub/b.md", "sub/c.txt"]
    got = [p.relative_to(tmp_path).as_posix() for p in iter_corpus(tmp_path, ["**/*"], ["sub/*"])]
    assert got == ["a.txt", "qa.jsonl"]
