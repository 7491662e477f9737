"""How each chapter reads: for every notebook in nbs/, the share of exported cells followed by their example or
test, the median cell length, the exported cells over 15 lines (not counting `#|` lines) that hold no class and
are not the imports cell, and the lines over 110 characters. Usage: python tools/chapter_rhythm.py [nbs] [-v]
(-v names each long cell: its index, its length and what it defines)."""
import ast, json, statistics, sys
from pathlib import Path

def kind(cell:dict) -> str:
    "'export', 'code' (an example or test), 'other' (markdown, or a code cell that only sets up)."
    if cell['cell_type'] != 'code': return 'other'
    src = ''.join(cell['source'])
    if '#| export' in src or '#| exports' in src: return 'export'
    if '#| default_exp' in src or not src.strip(): return 'other'
    return 'code'

def long_cell(src:str) -> str|None:
    "What an exported cell over 15 lines defines ('' for a script), or None when it is short, holds a class or imports only."
    lines = [l for l in src.splitlines() if not l.startswith('#|')]
    if len(lines) <= 15: return None
    body = ast.parse('\n'.join(lines)).body
    if any(isinstance(t, ast.ClassDef) for t in body): return None
    if all(isinstance(t, (ast.Import, ast.ImportFrom)) for t in body): return None
    return ','.join(t.name for t in body if hasattr(t, 'name'))

def long_cells(path:Path) -> list[str]:
    "Each long exported cell of the chapter (`long_cell`), as 'index:lines:names'."
    cells = json.loads(path.read_text())['cells']
    srcs = [(i, ''.join(c['source'])) for i, c in enumerate(cells) if kind(c) == 'export']
    return [f"{i}:{len([l for l in s.splitlines() if not l.startswith('#|')])}:{long_cell(s)}"
            for i, s in srcs if long_cell(s) is not None]

def rhythm(path:Path) -> dict:
    "The chapter's numbers: exported cells, share tested before the next export, share tested directly, cell lengths."
    cells = json.loads(path.read_text())['cells']
    kinds = [kind(c) for c in cells]
    exports = [i for i, k in enumerate(kinds) if k == 'export']
    def tested(i):  # an example or test comes before the next exported cell
        for k in kinds[i + 1:]:
            if k == 'export': return False
            if k == 'code': return True
        return False
    direct = [i for i in exports if i + 1 < len(kinds) and kinds[i + 1] == 'code']
    code = [''.join(c['source']).splitlines() for c in cells if c['cell_type'] == 'code']
    return dict(exported=len(exports), tested=sum(map(tested, exports)) / max(1, len(exports)),
                direct=len(direct) / max(1, len(exports)),
                median_lines=statistics.median([len(c) for c in code]) if code else 0,
                median_export_lines=statistics.median([len(''.join(cells[i]['source']).splitlines()) for i in exports]) if exports else 0,
                over_15=len(long_cells(path)), over_110=sum(len(l) > 110 for c in code for l in c))

if __name__ == '__main__':
    args = [a for a in sys.argv[1:] if a != '-v']
    root = Path(args[0] if args else 'nbs')
    print(f"{'chapter':<22} {'exported':>8} {'tested':>7} {'direct':>7} {'median':>7} {'med.exp':>7} {'>15':>4} {'>110':>5}")
    for nb in sorted(root.glob('[0-9]*.ipynb')):
        r = rhythm(nb)
        print(f"{nb.stem:<22} {r['exported']:>8} {r['tested']:>7.0%} {r['direct']:>7.0%} {r['median_lines']:>7} "
              f"{r['median_export_lines']:>7} {r['over_15']:>4} {r['over_110']:>5}")
        if '-v' in sys.argv: print('    ' + ' '.join(long_cells(nb)))
