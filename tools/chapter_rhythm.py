"""How each chapter reads: for every notebook in nbs/, the share of exported cells followed by their example or
test, the median cell length and the lines over 110 characters. Usage: python tools/chapter_rhythm.py [nbs]"""
import json, statistics, sys
from pathlib import Path

def kind(cell:dict) -> str:
    "'export', 'code' (an example or test), 'other' (markdown, or a code cell that only sets up)."
    if cell['cell_type'] != 'code': return 'other'
    src = ''.join(cell['source'])
    if '#| export' in src or '#| exports' in src: return 'export'
    if '#| default_exp' in src or not src.strip(): return 'other'
    return 'code'

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
                over_110=sum(len(l) > 110 for c in code for l in c))

if __name__ == '__main__':
    root = Path(sys.argv[1] if len(sys.argv) > 1 else 'nbs')
    print(f"{'chapter':<22} {'exported':>8} {'tested':>7} {'direct':>7} {'median':>7} {'med.exp':>7} {'>110':>5}")
    for nb in sorted(root.glob('[0-9]*.ipynb')):
        r = rhythm(nb)
        print(f"{nb.stem:<22} {r['exported']:>8} {r['tested']:>7.0%} {r['direct']:>7.0%} {r['median_lines']:>7} "
              f"{r['median_export_lines']:>7} {r['over_110']:>5}")
