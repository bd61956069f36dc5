"""The HTML report comes from a Jinja2 template with autoescape on: text from contracts, questions and answers is
escaped wherever it lands, and the template keeps every section of the report."""

from __future__ import annotations

from pathlib import Path

from rolora.evals.report import build_report, render_html

from test_eval_report import fake_run


def test_html_report_escapes_what_came_from_documents_and_keeps_every_section(tmp_path: Path) -> None:
    report = build_report(fake_run(tmp_path))
    evil = "<script>alert('x')</script><img src=x onerror=alert(1)>"
    cfg = next(iter(report["worst"]))
    report["worst"][cfg][0]["question"] = evil
    report["worst"][cfg][0]["answer"] = evil
    report["suite"]["description"] = evil
    page = render_html(report, {"metrics": b"\x89PNG fake"})
    assert "<script>" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page
    for heading in ("<h1>Eval: ", "<h2>Headline</h2>", "<h2>Adapters used</h2>", "<h2>Plots</h2>",
                    "<h2>Worst questions</h2>", "<h2>Answers</h2>"):  # fmt: skip
        assert heading in page, heading
    assert page.count("data:image/png;base64,") == 1 and page.rstrip().endswith("</body></html>")
    assert "class='better'" in page  # the headline's significant paired difference is marked
