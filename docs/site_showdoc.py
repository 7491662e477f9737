"""How the docs site renders `show_doc` entries: nbdev's markdown, with a true signature for every class.

nbdev's `show_doc` takes a class's signature from fastcore's `docments`, which reads `cls.__init__`. Three kinds of
class come out wrong:

- a class with no `__init__` of its own (a callback, an exception) gets `object.__init__` or
  `BaseException.__init__`, and shows `(*args, **kwargs)`;
- a `NamedTuple` is built by `__new__`, so it too shows `(*args, **kwargs)` instead of its fields;
- a dataclass loses its fields' comments, because nbdev runs the notebook's cells in `__main__`, where a class has
  no source file, and `docments` then has no source to read them from; and a field declared as a command-line flag
  (`opt(..., help=...)`) has its help in the field's metadata, where `docments` does not look.

`SiteRenderer` shows the first kind as `class Name(Bases)`, and a `NamedTuple` or dataclass with one line per
field: name, type, default and the field's comment (for a flag: its spelling and help). The comments come from the
class's source, or from the exported module when the class was defined in a notebook cell. Every other symbol
renders exactly as nbdev renders it.

`docs/build.py` has nbdev use it: `use_site_renderer()` in the build's own process, and `proc_nb` in place of
`nbdev.serve_drv.main` for the worker processes that `proc_nbs` spawns.
"""
import ast, dataclasses, importlib.util, inspect, io, tokenize, typing, warnings
from textwrap import dedent

from fastcore.basics import AttrDict
from fastcore.docments import DocmentText, empty
from nbdev.serve_drv import main as _nbdev_proc_nb  # kept before build.py puts `proc_nb` in its place
from nbdev.showdoc import BasicMarkdownRenderer


def is_namedtuple(cls): return inspect.isclass(cls) and issubclass(cls, tuple) and hasattr(cls, '_fields')


def _pyfunc(f): return inspect.isfunction(f) or inspect.ismethod(f)


def _no_constructor_args(cls):
    "Whether `cls` is built by a builtin's constructor (`object`, an exception), which is all `*args, **kwargs`."
    return not (_pyfunc(cls.__init__) or _pyfunc(cls.__new__))


def _exported_source(name):
    "The source of top-level class `name` in the module nbdev's index says it was exported to, or None."
    from nbdev.doclinks import NbdevLookup
    hit = NbdevLookup()[name]  # (docs URL, module file, source URL)
    if not isinstance(hit, tuple) or len(hit) < 2 or not hit[1]: return None
    spec = importlib.util.find_spec(hit[1].removesuffix('.py').replace('/', '.'))
    if spec is None or not spec.origin: return None
    src = open(spec.origin, encoding='utf-8').read()
    node = next((n for n in ast.parse(src).body if isinstance(n, ast.ClassDef) and n.name == name), None)
    if node is None: return None
    start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
    return ''.join(src.splitlines(keepends=True)[start - 1:node.end_lineno])  # whole lines: the last comment too


def class_source(cls):
    "The source of `cls`: from its module, or (for a class nbdev defined in `__main__`) from the exported module."
    if cls.__module__ not in ('__main__', '__mp_main__'):
        try: return inspect.getsource(cls)
        except (OSError, TypeError): pass
    return _exported_source(cls.__qualname__)


def field_comments(src):
    "`{field: comment}` for each annotated field in the class body of `src`: the comment on its line, or above it."
    src = dedent(src)
    body = next(n for n in ast.parse(src).body if isinstance(n, ast.ClassDef)).body
    fields = {n.lineno: n.target.id for n in body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
    comments = {t.start[0]: t.string[1:].strip() for t in tokenize.generate_tokens(io.StringIO(src).readline)
                if t.type == tokenize.COMMENT}
    res = {}
    for line, name in fields.items():
        if line in comments: res[name] = comments[line]; continue
        above, i = [], line - 1
        while i in comments and i not in fields: above.insert(0, comments[i]); i -= 1
        if above: res[name] = '\n'.join(above)
    return res


def _anno(t):
    "An annotation as written: NamedTuple turns string annotations into `ForwardRef`s."
    return t.__forward_arg__ if isinstance(t, typing.ForwardRef) else t


def _flag_doc(f, comment):
    "A dataclass field's comment, led by its command-line flag where its metadata declares one (`help`, `names`)."
    flag = next((v for v in f.metadata.values() if isinstance(getattr(v, 'help', None), str)), None)
    if flag is None: return comment
    names = getattr(flag, 'names', None) or ('--' + f.name.replace('_', '-'),)  # the default spelling of a flag
    return f"{', '.join(f'`{n}`' for n in names)}: {comment or flag.help}"


class _Code(str):
    "Text that `DocmentText` shows as it is (it shows a default's `repr`)."
    def __repr__(self): return str(self)


def _default(cls, name, default):
    "A field's default; for a dataclass field with a `default_factory`, the call (`f()`), not `<factory>`."
    f = getattr(cls, '__dataclass_fields__', {}).get(name)
    if f is not None and f.default_factory is not dataclasses.MISSING:
        return _Code(f'{getattr(f.default_factory, "__qualname__", "factory")}()')
    return default


def fields_docments(cls, comments):
    "A `DocmentText` listing the fields of NamedTuple or dataclass `cls`, in the order its constructor takes them."
    params = inspect.signature(cls).parameters  # NamedTuple: its __new__; dataclass: its generated __init__
    if dataclasses.is_dataclass(cls):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        types = {n: f.type for n, f in fields.items()}
        comments = {n: _flag_doc(f, comments.get(n)) for n, f in fields.items()}
    else: types = dict(getattr(cls, '__annotations__', {}))
    dm = {n: AttrDict(anno=_anno(types.get(n, p.annotation)), default=_default(cls, n, p.default), kind=p.kind,
                      docment=comments.get(n)) for n, p in params.items()}
    dm['return'] = AttrDict(anno=empty, default=empty, docment=None)  # a constructor: no `-> None`
    dt = DocmentText(cls, docstring=False)
    dt.dm = dm
    return dt


def class_line(cls):
    "`class Name(Base, ...)`: the heading of a class whose constructor takes what its builtin base takes."
    bases = ', '.join(b.__qualname__ for b in cls.__bases__ if b is not object)
    return f"class {cls.__qualname__}{f'({bases})' if bases else ''}"


class SiteRenderer(BasicMarkdownRenderer):
    "nbdev's markdown `show_doc`, with the fields of NamedTuples and dataclasses, and no `*args, **kwargs` on classes."
    def __init__(self, sym, *args, **kwargs):
        super().__init__(sym, *args, **kwargs)
        cls = self.sym
        if not inspect.isclass(cls): return
        if is_namedtuple(cls) or dataclasses.is_dataclass(cls):
            try: self.dm = fields_docments(cls, field_comments(class_source(cls) or f'class {cls.__name__}: pass'))
            except (OSError, SyntaxError, ImportError, ValueError, TypeError) as e:  # as nbdev does: say so, go on
                warnings.warn(f"docs: cannot list the fields of {cls.__qualname__} ({type(e).__name__}: {e}); "
                              "showing nbdev's signature")
        elif _no_constructor_args(cls): self.dm = class_line(cls)


def use_site_renderer():
    "Make `SiteRenderer` the renderer of `show_doc` (and `doc`) in this process."
    import nbdev.showdoc
    nbdev.showdoc.BasicMarkdownRenderer = SiteRenderer


def proc_nb(o):
    "One notebook's nbdev docs processing (`nbdev.serve_drv.main`), with `SiteRenderer` rendering `show_doc`."
    use_site_renderer()
    return _nbdev_proc_nb(o)
