"""Write the diagrams and the table that the docs include.

The lifecycle diagram and table are rendered from the one declaration in
``startable/_lifecycle.py``; the shop's dependency graph from
``examples/shop/shop.toml``; the command reference from the parser. A test
fails when these files are stale.
Run: ``uv run python docs/generate.py``.
"""

from pathlib import Path

from startable._lifecycle import render_mermaid, render_table
from startable.cli import render_reference
from startable.cluster import load_cluster
from startable.cluster._system.services import render_mermaid as render_graph

SHOP = Path(__file__).parent.parent / "examples" / "shop" / "shop.toml"

target = Path(__file__).parent / "_generated"
target.mkdir(exist_ok=True)
(target / "lifecycle-diagram.mmd").write_text(render_mermaid())
(target / "lifecycle-table.md").write_text(render_table())
(target / "shop-graph.mmd").write_text(render_graph(load_cluster(SHOP).services))
(target / "cli.md").write_text(render_reference())
