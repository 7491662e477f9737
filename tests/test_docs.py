"""The docs site: `python docs/build.py` renders every notebook, and every page works in headless Chromium.

The browser part drives Debian's `chromium` through the DevTools protocol (a websocket, `websocket-client`).
For each page it checks the title, the navigation, the API entries of the chapter's module and their signatures
(no `*args, **kwargs` a class does not take; every field of a NamedTuple or dataclass, with its comment), the
notebook's saved outputs and plots, the console (no errors) and the network (nothing but local files), and saves a
screenshot. It also checks that every API entry has a description, that search indexes every word of every page,
that at a phone's width long output lines scroll sideways, commands in prose wrap at their spaces and inline code
breaks only at its spaces, and that at 390 px the first screen is the page, with the navigation behind a button.
"""
import base64, importlib, inspect, json, re, shutil, subprocess, sys, time, urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT/'nbs'
if str(ROOT) not in sys.path: sys.path.insert(0, str(ROOT))  # the package of this working tree
CHROMIUM = next(filter(None, map(shutil.which, ('chromium', 'chromium-browser', 'google-chrome'))), None)
CHROMIUM_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
                  '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-dev-shm-usage',
                  '--window-size=1280,900']
_HIDDEN = re.compile(r'^\s*#\|\s*(?:hide|export|exporti|default_exp|include:\s*false|output:\s*false)\b', re.M)


# ---------------------------------------------------------------- what the notebooks say the site must show
def _notebooks():
    "Every page's notebook, as the build discovers them: nbs/*.ipynb and nbs/tutorials/*.ipynb."
    return sorted(p for p in [*NBS.glob('*.ipynb'), *NBS.glob('tutorials/*.ipynb')] if not p.name.startswith('_'))


def _cells(nb_path): return json.loads(nb_path.read_text(encoding='utf-8'))['cells']
def _src(c): return ''.join(c['source'])


def _expected(nb_path):
    "Page path, title, module and the outputs a reader must see, read from the source notebook."
    from nbdev.config import nbpath2html
    cells = _cells(nb_path)
    title = next((m.group(1).strip() for c in cells if c['cell_type'] == 'markdown'
                  for m in [re.match(r'#\s+(.+)', _src(c).lstrip())] if m), nb_path.stem)
    exp = next((m.group(1) for c in cells if c['cell_type'] == 'code'
                for m in [re.search(r'^\s*#\|\s*default_exp\s+(\S+)', _src(c), re.M)] if m), None)
    shown = [o for c in cells if c['cell_type'] == 'code' and not _HIDDEN.search(_src(c)) for o in c.get('outputs', [])]
    rel = nb_path.relative_to(NBS)
    return dict(href=(rel.parent/nbpath2html(rel).name).as_posix(), title=title, module=exp, outputs=len(shown),
                images=sum(any(k.startswith('image/') for k in o.get('data', {})) for o in shown))


def _api_names(module):
    "Functions and classes a chapter's module exports (`__all__`) and defines itself: each needs a doc entry."
    if module is None: return []
    mod = importlib.import_module(f'resnext_nb.{module}')
    objs = ((n, getattr(mod, n)) for n in getattr(mod, '__all__', []))
    return [n for n, o in objs if (inspect.isfunction(o) or inspect.isclass(o))
            and o.__module__ == mod.__name__ and o.__name__ == n]


PAGES = [_expected(p) for p in _notebooks()]


# ---------------------------------------------------------------- the build
@pytest.fixture(scope='module')
def site(tmp_path_factory):
    "Build the site once, with the one documented command, into a temporary folder."
    out = tmp_path_factory.mktemp('site')/'_docs'
    t = time.time()
    r = subprocess.run([sys.executable, 'docs/build.py', '--out', str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f'python docs/build.py failed:\n{r.stdout}\n{r.stderr}'
    print(f'\nsite built in {time.time() - t:.0f}s: {r.stdout.strip()}')
    return out


def test_every_notebook_has_a_page(site):
    assert any(p['href'] == 'index.html' for p in PAGES), 'nbs/index.ipynb is missing'
    missing = [p['href'] for p in PAGES if not (site/p['href']).is_file()]
    assert not missing, f'no page for: {missing}'
    assert (site/'search_index.js').is_file()


_FETCH = re.compile(r'''<script\b[^>]*\ssrc\s*=\s*["']?([^"'\s>]+)|<link\b[^>]*\shref\s*=\s*["']?([^"'\s>]+)'''
                    r'''|@import\s+(?:url\()?\s*["']?([^"'\s)]+)|url\(\s*["']?([^"'\s)]+)''', re.I)

def test_pages_fetch_nothing_from_the_internet(site):
    "Every <script src>, <link href>, @import and url() in the output is local, relative or inline data."
    bad = []
    for f in site.rglob('*'):
        if f.suffix not in ('.html', '.css', '.js'): continue
        for m in _FETCH.finditer(f.read_text(encoding='utf-8')):
            url = next(g for g in m.groups() if g)
            if re.match(r'(?:[a-z][a-z0-9+.-]*:)?//', url, re.I) or url.lower().startswith(('http:', 'https:')):
                bad.append(f'{f.relative_to(site)}: {m.group(0)[:120]}')
    assert not bad, 'pages load resources from the network:\n' + '\n'.join(bad)


def test_every_api_entry_has_a_description(site):
    "Each show_doc entry (a rule, the name, the signature) says in words what it is: its docstring's line."
    from bs4 import BeautifulSoup
    bare = []
    for page in PAGES:
        soup = BeautifulSoup((site/page['href']).read_text(encoding='utf-8'), 'html.parser')
        for out in soup.select('main div[data-mime-type="text/markdown"]'):
            h = out.find(['h3', 'h4'])
            if h is None or out.find('hr') is None: continue  # not a show_doc entry
            words = [t.get_text(' ', strip=True) for t in out.find_all(['p', 'table', 'ul'])
                     if t.get_text(strip=True) != 'source']  # show_doc's link to the source is not a description
            if not any(words): bare.append(f"{page['href']}: {h.get_text(strip=True).rstrip('¶')}")
    assert not bare, 'API entries with no description (give each a one-line docstring):\n' + '\n'.join(bare)


def test_links_lead_somewhere(site):
    """Every relative link on the site opens a page or file of the site, and every relative link in README.md a file
    of the repository (the chapter and tutorial tables link to their pages there, and to the notebooks here)."""
    from urllib.parse import unquote, urlsplit
    dead = []
    for f in site.rglob('*.html'):
        for href in re.findall(r'<a\b[^>]*\shref="([^"]+)"', f.read_text(encoding='utf-8')):
            u = urlsplit(href)
            if u.scheme or u.netloc or not u.path: continue  # another site, or an anchor on this page
            if not (f.parent/unquote(u.path)).exists(): dead.append(f'{f.relative_to(site)}: {href}')
    readme = (ROOT/'README.md').read_text(encoding='utf-8')
    for href in re.findall(r'\]\(([^)\s]+)\)', readme):
        u = urlsplit(href)
        if u.scheme or u.netloc or not u.path: continue
        if not (ROOT/unquote(u.path)).exists(): dead.append(f'README.md: {href}')
    assert not dead, 'links to nothing:\n' + '\n'.join(dead[:30])


# ---------------------------------------------------------------- the browser
class DevTools:
    "A minimal Chrome DevTools protocol client: send commands, keep the events that arrive meanwhile."
    def __init__(self, ws_url):
        import websocket
        self.ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True, enable_multithread=False)
        self.next_id, self.events = 0, []

    def send(self, method, **params):
        self.next_id += 1
        self.ws.send(json.dumps({'id': self.next_id, 'method': method, 'params': params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get('id') == self.next_id:
                if 'error' in msg: raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get('result', {})
            self.events.append(msg)

    def wait_for(self, method, timeout=60):
        deadline = time.time() + timeout
        while not any(e.get('method') == method for e in self.events):
            assert time.time() < deadline, f'no {method} within {timeout}s'
            self.events.append(json.loads(self.ws.recv()))

    def drain(self, seconds=0.3):
        "Collect events for `seconds` more (late console messages, failed loads)."
        self.ws.settimeout(seconds)
        try:
            while True: self.events.append(json.loads(self.ws.recv()))
        except Exception: pass
        finally: self.ws.settimeout(60)

    def js(self, expr):
        r = self.send('Runtime.evaluate', expression=expr, returnByValue=True, awaitPromise=True)
        assert 'exceptionDetails' not in r, r['exceptionDetails']
        return r['result'].get('value')


@pytest.fixture(scope='module')
def browser(tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip('chromium is not installed (apt-get install -y chromium); the browser checks need it')
    profile = tmp_path_factory.mktemp('chromium-profile')
    proc = subprocess.Popen([CHROMIUM, *CHROMIUM_FLAGS, f'--user-data-dir={profile}', '--remote-debugging-port=0',
                             'about:blank'], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        port_file, deadline = profile/'DevToolsActivePort', time.time() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            assert proc.poll() is None, f'chromium exited: {proc.stderr.read().decode()[-2000:]}'
            assert time.time() < deadline, 'chromium did not open its DevTools port within 60s'
            time.sleep(0.2)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f'http://127.0.0.1:{port}/json/list', timeout=10) as r:
            target = next(t for t in json.load(r) if t['type'] == 'page')
        dt = DevTools(target['webSocketDebuggerUrl'])
        for domain in ('Page', 'Runtime', 'Log', 'Network'): dt.send(f'{domain}.enable')
        yield dt
        dt.ws.close()
    finally:
        proc.terminate()
        try: proc.wait(timeout=20)
        except subprocess.TimeoutExpired: proc.kill()


def _problems(events):
    "Console errors, uncaught exceptions, failed loads and any request that leaves this machine."
    out = []
    for e in events:
        m, p = e.get('method'), e.get('params', {})
        if m == 'Runtime.exceptionThrown': out.append(f"exception: {p['exceptionDetails'].get('text')} "
                                                      f"{p['exceptionDetails'].get('exception', {}).get('description', '')}")
        elif m == 'Runtime.consoleAPICalled' and p.get('type') in ('error', 'assert'):
            out.append(f"console.{p['type']}: {[a.get('value', a.get('description')) for a in p.get('args', [])]}")
        elif m == 'Log.entryAdded' and p['entry'].get('level') == 'error':
            out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        elif m == 'Network.loadingFailed' and not p.get('canceled'): out.append(f"load failed: {p.get('errorText')}")
        elif m == 'Network.requestWillBeSent' and not p['request']['url'].startswith(('file:', 'data:', 'about:')):
            out.append(f"network request: {p['request']['url']}")
    return out


_PAGE_FACTS = '''(() => {
  const text = el => el.textContent.replace('\\u00b6', '').trim();
  const imgs = [...document.querySelectorAll('main .jp-OutputArea-output img, main .jp-RenderedSVG svg')];
  return {
    docTitle: document.title,
    h1: [...document.querySelectorAll('main h1')].map(text),
    headings: [...document.querySelectorAll('main h2, main h3, main h4')].map(text),
    nav: [...document.querySelectorAll('nav.site-nav .nav-pages > li > a')].map(a => a.href),
    current: [...document.querySelectorAll('nav.site-nav li.current > a')].map(text),
    outputs: document.querySelectorAll('main .jp-OutputArea-child').length,
    images: imgs.length,
    brokenImages: [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src.slice(0, 80)),
    // show_doc entries: the code block right after each heading, as the reader sees it
    signatures: Object.fromEntries([...document.querySelectorAll('main h3[id]')].flatMap(h => {
      const next = h.nextElementSibling;
      const pre = next && (next.tagName === 'PRE' ? next : next.querySelector(':scope > pre'));
      return pre ? [[h.id, pre.innerText]] : [];
    })),
  };
})()'''


def _screenshot(dt, path):
    "A full-page PNG (height capped, so a long chapter stays a reasonable file)."
    size = dt.send('Page.getLayoutMetrics')['cssContentSize']
    clip = dict(x=0, y=0, width=max(1280, size['width']), height=min(size['height'], 12000), scale=1)
    data = dt.send('Page.captureScreenshot', format='png', captureBeyondViewport=True, clip=clip)['data']
    path.write_bytes(base64.b64decode(data))


@pytest.mark.parametrize('page', PAGES, ids=[p['href'] for p in PAGES])
def test_page_in_chromium(site, browser, page, tmp_path_factory):
    dt, url = browser, (site/page['href']).as_uri()
    dt.events.clear()
    dt.send('Page.navigate', url=url)
    dt.wait_for('Page.loadEventFired')
    dt.drain()
    facts = dt.js(_PAGE_FACTS)
    shots = tmp_path_factory.getbasetemp()/'screenshots'
    shots.mkdir(exist_ok=True)
    _screenshot(dt, shots/(page['href'].replace('/', '_') + '.png'))

    problems = _problems(dt.events)
    assert not problems, f"{page['href']}:\n" + '\n'.join(problems)
    assert facts['h1'] == [page['title']], f"{page['href']}: H1 {facts['h1']}, expected {page['title']!r}"
    assert page['title'] in facts['docTitle']
    # the sidebar links every page, and marks this one
    expected_nav = {(site/p['href']).as_uri() for p in PAGES}
    assert set(facts['nav']) == expected_nav, f"nav {sorted(facts['nav'])} != pages {sorted(expected_nav)}"
    assert facts['current'] == [page['title']]
    # API docs: a show_doc entry for every function and class the chapter exports
    missing = [n for n in _api_names(page['module']) if n not in facts['headings']]
    assert not missing, f"{page['href']}: no API entry (show_doc heading) for {missing}"
    # the notebook's saved outputs and plots are on the page, and every image loads
    assert facts['outputs'] >= page['outputs'], f"{page['href']}: {facts['outputs']} outputs, notebook has {page['outputs']}"
    assert facts['images'] >= page['images'], f"{page['href']}: {facts['images']} plots, notebook has {page['images']}"
    assert not facts['brokenImages'], facts['brokenImages']
    bad = _signature_problems(page['module'], facts['signatures'])
    assert not bad, f"{page['href']}: show_doc signatures:\n" + '\n'.join(bad)


def _signature_problems(module, signatures):
    "Classes whose show_doc entry shows `*args, **kwargs` they do not take, or leaves out a field or its comment."
    import dataclasses
    if module is None: return []
    mod, out = importlib.import_module(f'resnext_nb.{module}'), []
    for name in _api_names(module):
        cls = getattr(mod, name)
        if not inspect.isclass(cls): continue
        sig = signatures.get(name)
        if sig is None: out.append(f'{name}: no signature under its heading'); continue
        try: params = inspect.signature(cls).parameters.values()
        except (TypeError, ValueError): params = []  # a builtin's constructor: an exception, say
        takes_any = any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params)
        if re.search(r'\*args|\*\*kwargs', sig) and not takes_any:
            out.append(f'{name}: shows {sig.strip()!r}, a signature it does not have')
        is_nt = issubclass(cls, tuple) and hasattr(cls, '_fields')
        if not (is_nt or dataclasses.is_dataclass(cls)): continue
        fields = cls._fields if is_nt else [f.name for f in dataclasses.fields(cls) if f.init]
        out += [f'{name}: field {f!r} is missing from {sig!r}' for f in fields if not re.search(rf'\b{f}\b', sig)]
        # each field's docs: the comment beside it in the class body, or the help of the flag it declares
        docs = {m[1]: m[2] for m in re.finditer(r'^\s*(\w+)\s*:[^#\n]*#\s*(.+?)\s*$', inspect.getsource(cls), re.M)}
        for f in dataclasses.fields(cls) if not is_nt else []:
            docs.setdefault(f.name, next((v.help for v in f.metadata.values() if getattr(v, 'help', None)), None))
        flat = ' '.join(sig.split())
        out += [f'{name}: the docs of field {f!r} ({d!r}) are missing' for f, d in docs.items()
                if d and f in fields and ' '.join(d.split()) not in flat]
    return out


def _search(browser, site, query):
    "Type `query` into the sidebar's search box on the home page; the result links."
    browser.events.clear()
    browser.send('Page.navigate', url=(site/'index.html').as_uri())
    browser.wait_for('Page.loadEventFired')
    return browser.js(f'''(() => {{
      const box = document.getElementById('site-search');
      box.value = {json.dumps(query)};
      box.dispatchEvent(new Event('input'));
      return [...document.querySelectorAll('#site-search-results a')].map(a => a.href);
    }})()''')


def test_search_finds_api_entries(site, browser):
    "Typing an exported name in the sidebar's search box lists its entry, linking to the chapter page."
    chapter = next((p for p in PAGES if _api_names(p['module'])), None)
    if chapter is None: pytest.skip('no chapter exports anything yet')
    links = _search(browser, site, _api_names(chapter['module'])[0])
    assert any(l.split('#')[0] == (site/chapter['href']).as_uri() for l in links), links


def _search_index(site):
    js = (site/'search_index.js').read_text(encoding='utf-8')
    return json.loads(js[js.index('=') + 1:].strip().rstrip(';'))


def _main_text(site, page):
    from bs4 import BeautifulSoup
    return BeautifulSoup((site/page['href']).read_text(encoding='utf-8'), 'html.parser').find('main').get_text(' ')


def test_search_index_holds_every_word(site):
    "A page's search entries hold all of its text, prose, code, outputs and signatures, not the start of each section."
    index = _search_index(site)
    for page in PAGES:
        blob = ' '.join(f"{e['p']} {e['h']} {e['t']}" for e in index if e['u'].split('#')[0] == page['href'])
        words = set(_main_text(site, page).split()) - {'¶', 'source'}  # heading anchors and show_doc's source links
        missing = sorted(w for w in words if w not in blob)
        assert not missing, f"{page['href']}: {len(missing)} words are not in the search index, e.g. {missing[:10]}"


def test_search_finds_a_flag_late_in_a_section(site, browser):
    "`skip-bad-images` (a flag in prose, code and a signature, far into long sections) finds every page that has it."
    term = 'skip-bad-images'
    pages = {(site/p['href']).as_uri() for p in PAGES if term in _main_text(site, p)}
    if not pages: pytest.skip(f'no page mentions {term} now')
    found = {l.split('#')[0] for l in _search(browser, site, term)}
    assert pages <= found, f'searching {term!r} misses {sorted(pages - found)}'


# Rendered at a phone's width, where long lines must wrap somewhere: output blocks, code cells and signatures keep
# their lines and scroll sideways; code blocks in prose (commands) wrap at their spaces; inline code wraps only at
# its spaces (never `--` / `lr`, never `persistent_work` / `ers`) unless one word is wider than the whole line.
_WRAPPING = '''(() => {
  const bad = [], range = document.createRange();
  const scrolls = el => ['auto', 'scroll'].includes(getComputedStyle(el).overflowX);
  const brokenWords = (root, allowed) => {
    const walk = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
    for (let n = walk.nextNode(); n; n = walk.nextNode())
      for (const m of n.data.matchAll(/\\S+/g)) {
        range.setStart(n, m.index);
        range.setEnd(n, m.index + m[0].length);
        if (new Set([...range.getClientRects()].map(r => Math.round(r.top))).size > 1 && !allowed(n))
          bad.push(`${root.tagName.toLowerCase()} broken inside ${JSON.stringify(m[0])}`);
      }
  };
  for (const pre of document.querySelectorAll('main pre')) {
    const ws = getComputedStyle(pre).whiteSpace;
    if (pre.closest('.jp-MarkdownCell')) {  // a command in prose: wrapped at its spaces; a longer word scrolls
      const start = pre.textContent.slice(0, 50);
      if (!['pre-wrap', 'break-spaces'].includes(ws)) bad.push(`prose code block with white-space ${ws}: ${start}`);
      else if (pre.scrollWidth > pre.clientWidth + 1 && !scrolls(pre)) bad.push(`prose code block cut off: ${start}`);
      brokenWords(pre, () => false);
      continue;
    }
    let box = pre;  // the <pre> itself, or the block around it (a code cell's editor area), scrolls sideways
    while (box.tagName !== 'MAIN' && !scrolls(box)) box = box.parentElement;
    if (!['pre', 'nowrap'].includes(ws) || box.tagName === 'MAIN')
      bad.push(`<pre> with white-space ${ws}, ${box.tagName === 'MAIN' ? 'in nothing that scrolls' : 'scrolling'}: `
               + pre.textContent.slice(0, 50));
  }
  // a word may break only when it is wider than its whole line: its .nobr box is then as wide as the line
  const fillsLine = n => {
    const word = n.parentElement.closest('.nobr'), line = word && word.parentElement.closest('p, li, td, th, div');
    if (!word || !line) return false;
    const cs = getComputedStyle(line);
    const inner = line.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight);
    return word.getBoundingClientRect().width >= inner - 1;
  };
  for (const code of document.querySelectorAll('main :not(pre) > code')) brokenWords(code, fillsLine);
  const scrolling = [...document.querySelectorAll('main .jp-OutputArea-output pre')]
    .filter(p => p.scrollWidth > p.clientWidth).length;
  return {bad: bad.slice(0, 20), scrolling};
})()'''


def test_long_lines_scroll_instead_of_breaking(site, browser):
    dt, scrolling = browser, 0
    dt.send('Emulation.setDeviceMetricsOverride', width=480, height=900, deviceScaleFactor=1, mobile=False)
    try:
        for page in PAGES:
            dt.events.clear()
            dt.send('Page.navigate', url=(site/page['href']).as_uri())
            dt.wait_for('Page.loadEventFired')
            r = dt.js(_WRAPPING)
            assert not r['bad'], f"{page['href']} at 480 px:\n" + '\n'.join(r['bad'])
            scrolling += r['scrolling']
    finally: dt.send('Emulation.clearDeviceMetricsOverride')
    assert scrolling, 'no printed output is wider than a 480 px page: the check above proved nothing'


# At a phone's width (390 px) the first screen is the page, not the navigation: the navigation is folded behind the
# bar's Menu button, which opens and closes it, and no block (code, output, table, plot) is wider than the screen.
_PHONE = '''(() => {
  const vw = window.innerWidth, vh = window.innerHeight;
  const nav = document.querySelector('nav.site-nav'), toggle = document.querySelector('.nav-toggle');
  const shown = el => !!el && getComputedStyle(el).display !== 'none' && el.getBoundingClientRect().height > 0;
  const title = document.querySelector('main h1');
  const wide = [...document.querySelectorAll(
      'main pre, main .jp-InputArea-editor, main .jp-OutputArea-output, main table, main img, '
      + 'main .jp-RenderedHTMLCommon > *')]
    .filter(el => el.getBoundingClientRect().right > vw + 1)
    .map(el => `${el.tagName.toLowerCase()}.${el.className}: right edge at ${Math.round(el.getBoundingClientRect().right)}`);
  const facts = {
    navFolded: !shown(nav), toggleShown: shown(toggle), expanded: toggle && toggle.getAttribute('aria-expanded'),
    titleTop: title ? Math.round(title.getBoundingClientRect().top) : null, vh,
    pageWidth: document.scrollingElement.scrollWidth, vw, wide: wide.slice(0, 10),
    proseBlocks: [...document.querySelectorAll('main .jp-MarkdownCell pre')]
      .map(p => [p.textContent.trim(), p.scrollWidth <= p.clientWidth + 1]),  // the text, and whether all of it shows
  };
  if (toggle) {
    toggle.click(); facts.opens = shown(nav) && toggle.getAttribute('aria-expanded') === 'true';
    toggle.click(); facts.closes = !shown(nav) && toggle.getAttribute('aria-expanded') === 'false';
  }
  return facts;
})()'''


def test_phone_shows_the_page_first(site, browser):
    dt, problems = browser, []
    dt.send('Emulation.setDeviceMetricsOverride', width=390, height=844, deviceScaleFactor=1, mobile=True)
    try:
        for page in PAGES:
            dt.events.clear()
            dt.send('Page.navigate', url=(site/page['href']).as_uri())
            dt.wait_for('Page.loadEventFired')
            f = dt.js(_PHONE)
            where = f"{page['href']} at 390 px"
            if not (f['navFolded'] and f['toggleShown'] and f['expanded'] == 'false'):
                problems.append(f'{where}: the navigation is not folded behind a Menu button ({f})')
            if f['titleTop'] is None or not 0 <= f['titleTop'] < f['vh'] / 3:
                problems.append(f"{where}: the page title is not high on the first screen (top {f['titleTop']})")
            if not (f.get('opens') and f.get('closes')):
                problems.append(f'{where}: the Menu button does not open and close the navigation')
            if f['pageWidth'] > f['vw'] + 1:
                problems.append(f"{where}: the page is {f['pageWidth']} px wide, so it scrolls sideways")
            problems += [f'{where}: wider than the screen: {w}' for w in f['wide']]
            if page['href'] == 'index.html':  # the quick start's two commands, whole on the screen
                quick_start = ('pip install -e . && python -m resnext_nb.launch', "pip install -e '.[dev]' && nbdev-test && pytest")
                for cmd in quick_start:
                    if not any(' '.join(b.split()) == cmd and whole for b, whole in f['proseBlocks']):
                        problems.append(f'{where}: no code block shows all of {cmd!r}')
    finally: dt.send('Emulation.clearDeviceMetricsOverride')
    assert not problems, '\n'.join(problems[:30])
