// Client-side search over search_index.js (built by docs/build.py): every term must appear in a section's
// heading, page title or text; sections whose heading matches more terms come first. And, on narrow screens,
// the button that opens the folded navigation.
(function () {
  const input = document.getElementById('site-search');
  const list = document.getElementById('site-search-results');
  const index = window.SITE_SEARCH || [];
  const root = document.body.dataset.root || '';

  function item(text, href, page) {
    const li = document.createElement('li');
    if (!href) { li.textContent = text; return li; }
    const a = document.createElement('a');
    a.href = root + href;
    a.textContent = text;
    const small = document.createElement('small');
    small.textContent = page;
    a.append(' ', small);
    li.append(a);
    return li;
  }

  function search(query) {
    const terms = query.toLowerCase().split(/\s+/).filter(Boolean);
    list.replaceChildren();
    list.hidden = terms.length === 0;
    if (list.hidden) return;
    const hits = [];
    for (const e of index) {
      const head = (e.h + ' ' + e.p).toLowerCase();
      const text = e.t.toLowerCase();
      if (terms.every(t => head.includes(t) || text.includes(t)))
        hits.push([terms.filter(t => e.h.toLowerCase().includes(t)).length, e]);
    }
    hits.sort((a, b) => b[0] - a[0]);
    for (const [, e] of hits.slice(0, 25)) list.append(item(e.h, e.u, e.p));
    if (!hits.length) list.append(item('No match'));
  }

  // Under 900 px (site.css) the navigation is folded behind the bar's button; the button opens and closes it.
  const nav = document.getElementById('site-nav');
  const toggle = document.querySelector('.nav-toggle');
  const folded = () => getComputedStyle(toggle).display !== 'none';
  function setOpen(open) {
    document.body.classList.toggle('nav-open', open);
    toggle.setAttribute('aria-expanded', String(open));
    toggle.textContent = open ? '✕ Close' : '☰ Menu';
  }
  toggle.addEventListener('click', () => setOpen(!document.body.classList.contains('nav-open')));
  nav.addEventListener('click', ev => { if (ev.target.closest('a') && folded()) setOpen(false); });

  input.addEventListener('input', () => search(input.value));
  document.addEventListener('keydown', ev => {
    if (ev.key === '/' && document.activeElement !== input) {
      ev.preventDefault();
      if (folded()) setOpen(true);
      input.focus();
    }
    if (ev.key === 'Escape' && document.activeElement === input) { input.value = ''; search(''); }
    if (ev.key === 'Escape' && document.body.classList.contains('nav-open')) { setOpen(false); toggle.focus(); }
  });
})();
