"""Write the lifecycle diagram and table that the docs include.

Both are rendered from the one declaration in ``startable/_lifecycle.py``; a
test fails when these files are stale. Run: ``uv run python docs/generate.py``.
"""

from pathlib import Path

from startable._lifecycle import render_mermaid, render_table

target = Path(__file__).parent / "_generated"
target.mkdir(exist_ok=True)
(target / "lifecycle-diagram.mmd").write_text(render_mermaid())
(target / "lifecycle-table.md").write_text(render_table())
