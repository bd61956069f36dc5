"""The fused LoRA's compiled kernel (adapters/serving/lora_rows.c): built once per machine, each row's own adapter
added in place exactly where torch's masked products add it, and a clear fallback where it cannot be built."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from conftest import missing_real_part


def _kernel(cache: Path) -> Any:
    from rolora.adapters.serving.lora_rows import c_compiler, load_kernel

    if c_compiler() is None:
        missing_real_part("no C compiler ($CC, or cc, gcc or clang on PATH) to build lora_rows.c", "install gcc")
    kernel = load_kernel(cache)
    assert kernel is not None, "lora_rows.c did not build or disagreed with torch (see the log)"
    return kernel


def test_kernel_adds_each_rows_own_adapter_where_torchs_masked_products_add_it(tmp_path: Path) -> None:
    """SmolLM2's layer widths (576 -> 1536, 1536 -> 576, 576 -> 192), 15 rows of three adapters of ranks 8, 16 and 8
    and base rows, into a view of a wider product's columns: the rows' sums equal ``((x @ A) * mask) @ B`` added to
    the base product, base rows and the product's other columns are untouched, bit for bit."""
    import torch

    from rolora.adapters.serving.lora_rows import RowGroups, load_kernel

    kernel = _kernel(tmp_path / "kernels")
    assert sorted(p.name[:10] for p in (tmp_path / "kernels").iterdir()) == ["lora_rows-"]  # one file, no temp left
    gen = torch.Generator().manual_seed(7)
    ranges = {0: (0, 8), 1: (8, 16), 2: (24, 8)}
    row_slot = [1, -1, 0, 2, 1, 1, -1, 0, 2, 2, 1, 0, 0, 1, 1]
    mask = torch.zeros(len(row_slot), 32)
    for t, s in enumerate(row_slot):
        if s >= 0:
            mask[t, ranges[s][0] : sum(ranges[s])] = 1
    groups = RowGroups(row_slot, ranges)
    for n_in, n_out in ((576, 1536), (1536, 576), (576, 192)):
        a = torch.randn(32, n_in, generator=gen) * 0.05  # the stacked A matrices [R, in], as the kernel reads them
        a_t = a.T
        b_t = torch.randn(32, n_out, generator=gen) * 0.05
        x = torch.randn(len(row_slot), n_in, generator=gen)
        wide = torch.randn(len(row_slot), n_out + 64, generator=gen)
        before = wide.clone()
        kernel.add(kernel.layer(a, b_t), x, wide[:, 32 : 32 + n_out], groups)
        expected = before[:, 32 : 32 + n_out] + ((x @ a_t) * mask) @ b_t
        assert torch.allclose(wide[:, 32 : 32 + n_out], expected, atol=1e-5, rtol=1e-4), (n_in, n_out)
        assert torch.equal(wide[:, :32], before[:, :32]) and torch.equal(wide[:, 32 + n_out :], before[:, 32 + n_out :])
        base_rows = [t for t, s in enumerate(row_slot) if s < 0]
        assert torch.equal(wide[base_rows], before[base_rows])
        assert not torch.allclose(wide, before), "nothing was added"
    assert load_kernel(tmp_path / "kernels") is kernel  # built and checked once a process
    # never a read or write past what the layer and the rows were planned for
    with pytest.raises(ValueError, match="14 rows of input"):
        kernel.add(kernel.layer(a, b_t), x[:14], wide[:14, 32 : 32 + n_out], groups)
    with pytest.raises(ValueError, match="for a float32 layer of 576 -> 192"):
        kernel.add(kernel.layer(a, b_t), x, wide[:, :64], groups)
    with pytest.raises(ValueError, match="float32"):
        kernel.add(kernel.layer(a, b_t), x.double(), wide[:, 32 : 32 + n_out], groups)
    with pytest.raises(ValueError, match="contiguous float32"):
        kernel.layer(a_t, b_t)  # A transposed: a view, not the stack's rows
    with pytest.raises(ValueError, match="ranks differ"):
        kernel.layer(a[:24].contiguous(), b_t)
    two_positions = x.view(len(row_slot), 1, n_in).expand(-1, 2, -1)  # a prefill's rows: not the kernel's
    with pytest.raises(ValueError, match="not one position a row"):
        kernel.add(kernel.layer(a, b_t), two_positions, wide[:, 32 : 32 + n_out], groups)
    assert not kernel.add_if_fits(kernel.layer(a, b_t), two_positions, wide[:, 32 : 32 + n_out], groups)


def test_a_column_plan_adds_each_layers_lora_into_its_columns_of_a_shared_product(tmp_path: Path) -> None:
    """q, k and v of one input (576 -> 576, 192, 192) with their products side by side, k without a LoRA: one
    ``add_columns`` adds q's and v's rows' LoRA into their columns as separate ``add`` calls on views would, bit for
    bit, and leaves k's columns; inputs that do not fit the plan add nothing and say so; a plan past the product's
    width, or of layers of other input widths, is refused."""
    import torch

    from rolora.adapters.serving.lora_rows import ColumnPlan, RowGroups

    kernel = _kernel(tmp_path / "kernels")
    gen = torch.Generator().manual_seed(3)
    ranges = {0: (0, 8), 1: (8, 8)}
    row_slot = [0, 1, -1, 1, 0, 0]
    groups = RowGroups(row_slot, ranges)
    q = kernel.layer(torch.randn(16, 576, generator=gen), torch.randn(16, 576, generator=gen))
    v = kernel.layer(torch.randn(16, 576, generator=gen), torch.randn(16, 192, generator=gen))
    plan = ColumnPlan([(q, groups, 0), (v, groups, 768)], 960)
    x = torch.randn(len(row_slot), 1, 576, generator=gen)
    product = torch.randn(len(row_slot), 1, 960, generator=gen)
    want = product.clone()
    kernel.add(q, x, want[..., :576], groups)
    kernel.add(v, x, want[..., 768:], groups)
    before = product.clone()
    assert kernel.add_columns(plan, x, product)
    assert torch.equal(product, want) and torch.equal(product[..., 576:768], before[..., 576:768])
    assert not torch.equal(product[..., :576], before[..., :576]) and not torch.equal(
        product[..., 768:], before[..., 768:]
    )
    for x_bad, product_bad in (
        (x[:5], product[:5]),  # other rows than planned
        (x, product[..., :900]),  # another width
        (x.expand(-1, 2, -1), product.expand(-1, 2, -1)),  # two positions a row
        (x.double(), product),
    ):
        kept = product.clone()
        assert not kernel.add_columns(plan, x_bad, product_bad)
        assert torch.equal(product, kept)
    with pytest.raises(ValueError, match=r"columns 768\.\.960 of a 900-wide product"):
        ColumnPlan([(q, groups, 0), (v, groups, 768)], 900)
    other = kernel.layer(torch.randn(16, 192, generator=gen), torch.randn(16, 192, generator=gen))
    with pytest.raises(ValueError, match="one input width"):
        ColumnPlan([(q, groups, 0), (other, groups, 576)], 960)


def test_a_compiler_that_fails_leaves_torchs_products_with_one_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``$CC`` that fails (or none on PATH): no kernel, a one-line warning naming the compiler, nothing left behind;
    the fused path then runs torch's products (the in-process tests run both)."""
    from rolora.adapters.serving.lora_rows import load_kernel

    monkeypatch.setenv("CC", shutil.which("false") or "false")
    with caplog.at_level(logging.WARNING, logger="rolora.serving"):
        assert load_kernel(tmp_path / "failing") is None
    assert "building lora_rows.c with" in caplog.text and "false" in caplog.text
    assert not any((tmp_path / "failing").iterdir())  # the temp folder went with the failed build
    monkeypatch.delenv("CC")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert load_kernel(tmp_path / "none") is None
    assert not (tmp_path / "none").exists()
