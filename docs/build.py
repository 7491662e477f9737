#!/usr/bin/env python
"""Build the docs site into `_docs/` without Quarto, or regenerate `README.md` from `nbs/index.ipynb`.

    python docs/build.py               # the site: _docs/index.html and one page per notebook
    python docs/build.py --readme      # README.md from nbs/index.ipynb

Where Quarto is installed, `nbdev-docs` builds nbdev's usual Quarto site from the same notebooks
(`nbs/_quarto.yml`, `nbs/nbdev.yml`, `nbs/styles.css`). This script is the path that needs no Quarto, and it is
glue between two maintained tools:

1. nbdev processes the notebooks exactly as it does before handing them to Quarto (`proc_nbs`, the work of
   `nbdev-proc-nbs`): it runs the exported cells and turns every export into a `show_doc` entry (signature with
   its docments), drops hidden and exported cells, and moves the H1 title and `>` subtitle into front matter.
   One change: `show_doc` renders with `docs/site_showdoc.py`, which gives classes their true signature (a
   NamedTuple's or dataclass's fields, with their comments; no `*args, **kwargs` where a class has no `__init__`).
2. nbconvert's HTML exporter renders each processed notebook with its `lab` template, extended in
   `docs/templates/site.html.j2` to load nothing from the internet (no require.js, MathJax, widget or mermaid
   scripts from CDNs), to add one sidebar with every page (folded behind a Menu button under 900 px, so that a
   phone shows the page first), and to honour the Quarto cell options nbdev leaves behind (`echo`, `output`,
   `include`, `code-fold`).

The build does not make the examples' outputs: a page shows the outputs saved in its notebook, as nbdev's Quarto
site does. The notebooks are therefore saved with their outputs (run the notebook, save, `nbdev-clean`), which keeps
the build fast and free of training runs, and `tests/test_docs.py` checks that every saved output and plot reaches
its page.

Pages are found by glob, so new chapters (`nbs/*.ipynb`) and tutorials (`nbs/tutorials/*.ipynb`) appear without
editing anything here. A build fails if any page would fetch a script, style, font or image from another host.
"""
import argparse, json, os, re, shutil, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = Path(__file__).resolve().parent
# Quarto's own configuration is copied into nbdev's cache with the notebooks; it is not part of this site.
QUARTO_FILES = {'_quarto.yml', 'nbdev.yml', 'sidebar.yml', 'styles.css', '_metadata.yml', '_brand.yml'}


def _setup():
    "Run from the repository root, documenting the package in this working tree."
    os.chdir(ROOT)
    for p in (ROOT, DOCS):  # spawned nbdev workers inherit sys.path: the package, and site_showdoc beside this file
        if str(p) not in sys.path: sys.path.insert(0, str(p))
    os.environ.setdefault('MPLBACKEND', 'Agg')
    # show_doc with true class signatures (see docs/site_showdoc.py), here and in the workers proc_nbs spawns
    import nbdev.serve_drv, site_showdoc
    site_showdoc.use_site_renderer()
    nbdev.serve_drv.main = site_showdoc.proc_nb


# ---------------------------------------------------------------- notebook -> page model
_re_opt = re.compile(r'^\s*#\|\s*([\w-]+)\s*:\s*(.*?)\s*$')

def front_matter(nb):
    "Pop the YAML front matter cell that nbdev's `FrontmatterProc` puts first; return it as a dict."
    import yaml
    c = nb.cells[0] if nb.cells else None
    if c is None or c.cell_type != 'raw' or not c.source.lstrip().startswith('---'): return {}
    nb.cells.pop(0)
    return yaml.safe_load(c.source.strip().strip('-')) or {}


def quarto_options(cell):
    "Remove the leading `#| key: value` lines nbdev keeps for Quarto and return them as a dict."
    import yaml
    lines, opts = cell.source.splitlines(), {}
    while lines and (m := _re_opt.match(lines[0])):
        opts[m.group(1)] = yaml.safe_load(m.group(2)) if m.group(2) else None
        lines.pop(0)
    cell.source = '\n'.join(lines)
    return opts


def apply_options(nb):
    "Do what Quarto would do with `include`, `echo`, `output` and `code-fold` cell options."
    cells = []
    for c in nb.cells:
        if c.cell_type != 'code': cells.append(c); continue
        o = quarto_options(c)
        if o.get('include') is False: continue
        if o.get('echo') is False: c.metadata.setdefault('transient', {})['remove_source'] = True
        if o.get('output') is False: c.outputs = []
        if o.get('code-fold') not in (None, False):
            c.metadata['code_fold'] = 'open' if o['code-fold'] == 'show' else 'closed'
            c.metadata['code_summary'] = o.get('code-summary') or 'Code'
        if c.source.strip() or c.outputs: cells.append(c)
    nb.cells = cells


def _attr_link(m):
    "A Pandoc link with attributes, like show_doc's `[source](url){target=...}`, as an HTML link."
    attrs = ''.join(f' {k}="{v}"' for k, v in re.findall(r'([\w-]+)="([^"]*)"', m.group(3)))
    return f'<a href="{m.group(2)}"{attrs}>{m.group(1)}</a>'


def fix_links(md, root, doc_url):
    "Make links work offline: hosted-docs URLs and `.ipynb` links become relative `.html` links."
    from nbdev.config import nbpath2html
    if doc_url: md = md.replace(doc_url.rstrip('/') + '/', root)
    md = re.sub(r'\[([^\]\n]*)\]\(([^)\s]+)\)\{([^}\n]*)\}', _attr_link, md)
    def _nb(m):
        p = Path(m.group(1))
        return f']({p.with_name(nbpath2html(p).name).as_posix()}{m.group(2) or ""})'
    return re.sub(r'\]\((?![\w+.-]+:|/|#)([^)\s#]+?\.ipynb)(#[^)\s]*)?\)', _nb, md)


def relink(nb, root, doc_url):
    for c in nb.cells:
        if c.cell_type == 'markdown': c.source = fix_links(c.source, root, doc_url)
        for o in c.get('outputs', []):
            d = o.get('data', {})
            if 'text/markdown' in d: d['text/markdown'] = fix_links(d['text/markdown'], root, doc_url)


_cell_keys = {'cell_type', 'id', 'metadata', 'source', 'outputs', 'execution_count', 'attachments'}

def read_processed(path_or_text):
    "A processed notebook as nbformat, without the working keys nbdev and execnb leave on cells."
    import nbformat
    if isinstance(path_or_text, str): nb = nbformat.reads(path_or_text, as_version=4)
    else: nb = nbformat.read(path_or_text, as_version=4)
    for c in nb.cells:
        for k in set(c) - _cell_keys: del c[k]
        c.metadata.pop('execution', None)  # execnb's timings, not in nbformat's schema
    return nb


def discover(proc):
    "Processed notebooks as nav sections: the top level (index first), then one section per sub-folder."
    def _key(p): return (p.stem != 'index', p.name)
    top = sorted(proc.glob('*.ipynb'), key=_key)
    subs = sorted({p.parent for p in proc.rglob('*.ipynb')} - {proc})
    sections = [(None, top)] if top else []
    for d in subs:
        name = re.sub(r'^\d+_', '', d.relative_to(proc).as_posix()).replace('_', ' ').capitalize()
        sections.append((name, sorted(d.glob('*.ipynb'), key=_key)))
    return sections


# ---------------------------------------------------------------- offline check
_ext = r'''["']?\s*(?:[a-z][a-z0-9+.-]*:)?//'''  # an absolute or protocol-relative URL
_fetching = [re.compile(p, re.I) for p in (
    r'<script\b[^>]*\ssrc\s*=\s*' + _ext, r'<link\b[^>]*\shref\s*=\s*' + _ext,
    r'<(?:img|iframe|source|audio|video|embed|track|input)\b[^>]*\s(?:src|srcset|poster)\s*=\s*' + _ext,
    r'<object\b[^>]*\sdata\s*=\s*' + _ext, r'@import\s+(?:url\()?\s*' + _ext, r'url\(\s*' + _ext)]

def external_fetches(html):
    "Every place in `html` that would make a browser fetch from the network."
    return [m.group(0)[:160] for p in _fetching for m in p.finditer(html)]


# ---------------------------------------------------------------- rendering
def exporter():
    from nbconvert import HTMLExporter
    return HTMLExporter(template_name='lab', extra_template_paths=[str(DOCS/'templates')],
                        template_file='site.html.j2', exclude_input_prompt=True, exclude_output_prompt=True,
                        theme='light')  # images the notebooks link to are copied next to the pages


_inline = {'a', 'abbr', 'b', 'code', 'em', 'i', 'kbd', 'mark', 'q', 's', 'samp', 'small', 'span', 'strong', 'sub',
           'sup', 'u', 'var', 'wbr'}  # text inside these runs on; every other element is a word boundary

def index_page(html, url, page_title):
    "Headings of a rendered page (for its table of contents) and all the text under each: prose, code and outputs."
    from bs4 import BeautifulSoup, NavigableString, Comment
    main = BeautifulSoup(html, 'html.parser').find('main')
    entries, toc = [], []
    cur = {'h': page_title, 'p': page_title, 'u': url, 't': []}

    def walk(node):
        nonlocal cur
        for el in node.children:
            if isinstance(el, Comment): continue
            if isinstance(el, NavigableString): cur['t'].append(str(el)); continue
            if el.name in ('script', 'style', 'h1') or 'anchor-link' in el.get('class', []): continue
            if el.name == 'a' and 'float:right' in el.get('style', '') and el.get_text() == 'source': continue
            if el.name in ('h2', 'h3', 'h4') and el.get('id'):
                entries.append(cur)
                h = el.get_text(' ', strip=True).rstrip('¶').strip()
                cur = {'h': h, 'p': page_title, 'u': f"{url}#{el['id']}", 't': []}
                if el.name == 'h2': toc.append((el['id'], h))
                continue
            gap = [] if el.name in _inline else [' ']  # `--skip-bad-images` in highlighted code stays one word
            cur['t'] += gap; walk(el); cur['t'] += gap

    walk(main)
    entries.append(cur)
    for e in entries: e['t'] = re.sub(r'\s+', ' ', ''.join(e['t'])).strip()
    return toc, entries


def lowercase_anchors(html):
    "Add lower-case aliases of heading ids: nbdev's symbol links use `page.html#lossscaler.step`."
    ids = set(re.findall(r'\sid="([^"]+)"', html))
    def _alias(m):
        i, lo = m.group(2), m.group(2).lower()
        if lo == i or lo in ids: return m.group(0)
        ids.add(lo)
        return f'{m.group(0)}<a class="id-alias" id="{lo}"></a>'
    return re.sub(r'<(h[1-6]) id="([^"]+)"[^>]*>', _alias, html)


_inline_code = re.compile(r'(?<!<pre>)<code>([^<]*)</code>')  # markdown's `code`, not a code block's <pre><code>

def unbroken_words(html):
    "Inline code wraps only at its spaces: each word in a `nobr` span (a browser would break `--lr` after a hyphen)."
    def _words(m): return '<code>' + re.sub(r'\S+', r'<span class="nobr">\g<0></span>', m.group(1)) + '</code>'
    return _inline_code.sub(_words, html)


# A markdown code block: highlighted (```sh) or plain (```); show_doc's signatures are the first kind too.
_code_block = re.compile(r'(<div class="highlight"><pre>|<pre><code>)(.*?)(</pre></div>|</code></pre>)', re.S)

def unbroken_code_blocks(html):
    "Code blocks in prose wrap only at their spaces (site.css): each word of their text in a `nobr` span."
    def _text(t): return re.sub(r'[^\s<>]+', r'<span class="nobr">\g<0></span>', t)
    def _block(m):
        parts = re.split(r'(<[^>]*>)', m.group(2))  # tags (the highlighter's spans) and the text between them
        return m.group(1) + ''.join(p if p.startswith('<') else _text(p) for p in parts) + m.group(3)
    return _code_block.sub(_block, html)


def render_page(exp, src, page, site, doc_url):
    from markupsafe import escape
    from nbconvert.filters.markdown_mistune import markdown2html_mistune
    nb = read_processed(src)
    front_matter(nb)
    apply_options(nb)
    root = '../' * page['href'].count('/')
    relink(nb, root, doc_url)
    nb.metadata['title'] = f"{page['title']} – {site['title']}" if page['title'] != site['title'] else page['title']
    desc = page.get('description') or ''
    res = {'metadata': {'name': src.stem, 'path': str(src.parent)},
           'site': {**site, 'root': root, 'current': page['href'], 'page': page,
                    'description_html': markdown2html_mistune(fix_links(desc, root, doc_url)) if desc else ''}}
    html, _ = exp.from_notebook_node(nb, resources=res)
    html = unbroken_code_blocks(unbroken_words(lowercase_anchors(html)))
    toc, entries = index_page(html, page['href'], page['title'])
    toc_html = ''.join(f'<li><a href="#{escape(i)}">{escape(h)}</a></li>' for i, h in toc)
    html = html.replace('<!--SITE-TOC-->', f'<ul class="toc">{toc_html}</ul>' if toc else '', 1)
    return html, entries


def build_site(out='_docs', n_workers=None):
    "Process `nbs/` with nbdev and render every notebook into `out`; return the list of pages."
    _setup()
    t0 = time.time()
    from nbdev.config import get_config, nbpath2html
    from nbdev.serve import proc_nbs
    cfg = get_config()
    out = (ROOT/out).resolve()
    if out.exists() and any(out.iterdir()) and not (out/'index.html').exists():  # never wipe an unrelated folder
        raise SystemExit(f'docs: {out} is not empty and holds no earlier site; choose another --out')
    n_workers = os.cpu_count() if n_workers is None else n_workers
    try: proc = Path(proc_nbs(str(cfg.nbs_path), n_workers=n_workers, force=True))
    except Exception as e:
        raise SystemExit(
            f'docs: nbdev could not process the notebooks (the same step nbdev-docs runs before Quarto):\n{e}\n\n'
            'For the docs, nbdev runs only the cells that are exported, call show_doc, or contain an import '
            '(anywhere, even inside a function body), in order, so such a cell must not need the other cells. '
            'Move the import into the imports cell, or split the example code into its own cell.') from e
    t1 = time.time()

    sections, pages = [], []
    for name, nbs in discover(proc):
        sec = {'title': name, 'pages': []}
        for src in nbs:
            rel = src.relative_to(proc)
            fm = front_matter(read_processed(src))
            href = (rel.parent/(fm.get('output-file') or nbpath2html(rel).name)).as_posix()
            page = {'href': href, 'title': str(fm.get('title') or src.stem), 'src': rel.as_posix(),
                    'description': str(fm.get('description') or '')}
            sec['pages'].append(page); pages.append((src, page))
        sections.append(sec)
    site = {'title': cfg.get('title') or cfg.lib_name, 'nav': sections,
            'css': (DOCS/'site.css').read_text(), 'js': (DOCS/'site.js').read_text()}

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    exp, search, problems = exporter(), [], []
    for src, page in pages:
        html, entries = render_page(exp, src, page, site, cfg.get('doc_url', ''))
        problems += [f"{page['href']}: {m}" for m in external_fetches(html)]
        dest = out/page['href']
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(html, encoding='utf-8')
        search += entries
    for f in proc.rglob('*'):  # images and other files the notebooks link to
        if f.is_file() and f.suffix != '.ipynb' and f.name not in QUARTO_FILES and not f.name.startswith('.'):
            (out/f.relative_to(proc)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, out/f.relative_to(proc))
    (out/'search_index.js').write_text('window.SITE_SEARCH = ' + json.dumps(search, ensure_ascii=False) + ';\n')
    (out/'.nojekyll').touch()
    if problems:
        raise SystemExit('docs: these pages would fetch from the internet; make them local or inline:\n  '
                         + '\n  '.join(problems))
    print(f'docs: {len(pages)} pages in {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out} '
          f'(nbdev processing {t1-t0:.1f}s, rendering {time.time()-t1:.1f}s)')
    return [p for _, p in pages]


# ---------------------------------------------------------------- README.md
def build_readme(dest='README.md'):
    "Write `dest` from the readme notebook (nbs/index.ipynb), processed by nbdev, as GitHub markdown."
    _setup()
    from fastcore.nbio import read_nb, nb2str
    from nbconvert import MarkdownExporter
    from nbdev.config import get_config
    from nbdev.processors import FilterDefaults, add_links, insert_warning

    class ReadmeProcs(FilterDefaults):
        # `add_links` turns `names` into links to the hosted docs, but only for packages that are installed,
        # so README.md would differ between a fresh clone and an installed one.
        def base_procs(self): return [p for p in super().base_procs() if p is not add_links]

    cfg = get_config()
    nb = read_nb(cfg.nbs_path/cfg.readme_nb)
    os.environ['IN_TEST'] = '1'  # as nbdev's own processing workers do
    try: ReadmeProcs()(nb)
    finally: del os.environ['IN_TEST']
    nb = read_processed(nb2str(nb))
    nb.metadata.setdefault('language_info', {'name': 'python'})  # code blocks are ```python
    fm = front_matter(nb)
    nb.cells = [c for c in nb.cells if c.source.strip() != insert_warning.content]  # one warning, below
    apply_options(nb)
    nbdir = (cfg.nbs_path/cfg.readme_nb).parent.relative_to(cfg.config_path).as_posix()
    for c in nb.cells:
        if c.cell_type != 'markdown': continue
        c.source = re.sub(r'(\]\([^)\s]*\))\{[^}\n]*\}', r'\1', c.source)  # Pandoc link attributes: GitHub drops them
        # links to notebooks point at the notebooks in the repository, which GitHub renders
        c.source = re.sub(r'\]\((?![\w+.-]+:|/|#)([^)\s]+?\.ipynb(?:#[^)\s]*)?)\)', rf']({nbdir}/\1)', c.source)
    body, res = MarkdownExporter(exclude_input_prompt=True, exclude_output_prompt=True).from_notebook_node(
        nb, resources={'output_files_dir': Path(dest).stem + '_files'})
    head = f"# {fm.get('title', cfg.lib_name)}\n\n"
    if fm.get('description'): head += f"> {' '.join(str(fm['description']).split())}\n\n"
    head += (f'<!-- WARNING: THIS FILE WAS AUTOGENERATED FROM {cfg.nbs_path.name}/{cfg.readme_nb} BY '
             '`python docs/build.py --readme`! DO NOT EDIT! -->\n\n')
    md = re.sub(r'\n{3,}', '\n\n', head + body).strip() + '\n'
    (ROOT/dest).write_text(md, encoding='utf-8')
    for name, data in res.get('outputs', {}).items():
        (ROOT/name).parent.mkdir(parents=True, exist_ok=True)
        (ROOT/name).write_bytes(data)
    print(f'docs: wrote {dest} from {cfg.nbs_path.name}/{cfg.readme_nb}')


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--readme', action='store_true', help='regenerate README.md from nbs/index.ipynb and stop')
    ap.add_argument('--out', default='_docs', help='output folder, relative to the repository root (default _docs)')
    ap.add_argument('--workers', type=int, default=None, help="nbdev's processing workers (default: CPU count)")
    a = ap.parse_args()
    if a.readme: build_readme()
    else: build_site(a.out, a.workers)
