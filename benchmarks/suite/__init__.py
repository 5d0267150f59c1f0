"""`make bench`: every benchmark with its baseline in the same run, and the page that shows them.

Each module here is one section of docs/benchmarks.md with a declared shape (``common.Section``):
``run(quick, work)`` measures and returns plain data (JSON), ``render(results, figures)`` turns that
data into the section's Markdown and plots. ``python -m benchmarks.suite`` runs them in one place
(``__main__``), keeps the raw figures in ``out/bench/results.json`` and writes the page from them, so
every number on the page comes from one run, dated, with the machine it ran on.
"""
