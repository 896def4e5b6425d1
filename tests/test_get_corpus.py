"""Tests for tools/get_corpus.py (Japanese corpus from Debian documentation).

Expected values are worked out by hand from the small inputs written here, or
come from the released copy in ../shared/corpus; nothing needs the network
except the test marked slow.
"""
import gzip
import os
import shutil
import subprocess
import sys
import time
import unicodedata

import pytest
from hypothesis import given, settings, strategies as st

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tools import get_corpus as gc  # noqa: E402

SCRIPT = os.path.join(REPO, "tools", "get_corpus.py")
SHARED_CORPUS = os.path.join(os.path.dirname(REPO), "shared", "corpus", "ja-docs-train")
HAVE_GROFF = shutil.which("groff") is not None
HAVE_DPKG_DEB = shutil.which("dpkg-deb") is not None


def run_tool(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, SCRIPT] + [str(a) for a in args], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=timeout)


def write(path, content, encoding="utf-8"):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    data = content.encode(encoding) if isinstance(content, str) else content
    with open(str(path), "wb") as f:
        f.write(data)


def read(path):
    with open(str(path), encoding="utf-8") as f:
        return f.read()


def shard(*documents):
    """The corpus format: a paragraph per line, documents apart by two empty lines."""
    return "\n\n\n".join("\n".join(d) for d in documents) + "\n"


# ------------------------------------------------------------------ HTML

PAGE = """<?xml version="1.0" encoding="UTF-8"?>
<html><head><title>タイトルは本文ではない</title>
<style>p { color: red } /* スタイル */</style>
<script>var s = "スクリプトの文字列";</script></head>
<body>
<div class="navheader"><a href="prev.html">前のページへ</a></div>
<nav>ナビゲーションの文字</nav>
<div class="toc"><ul><li>目次の項目</li></ul></div>
<h1>見出しの文</h1>
<p>最初の段落です。&amp; と &lt;tag&gt; と &#x3042; と &copy;。</p>
<p>二行目は<br/>改行で分かれます。</p>
<pre>コードは消える</pre>
<p>脚注つき<a href="#ftn.1" class="footnote"><sup class="footnote">[1]</sup></a>の文。
10<sup>-12</sup> は残る。</p>
<p>改行を
   またぐ文。 English
   words.</p>
<ul><li>項目一</li><li>全角&nbsp;空白</li></ul>
<div class="navfooter"><p>次のページへ</p></div>
</body></html>
"""


def test_html_keeps_text_and_drops_markup_navigation_and_code():
    assert gc.clean_paragraphs(gc.html_to_paragraphs(PAGE)) == [
        "見出しの文",
        "最初の段落です。& と <tag> と あ と ©。",
        "二行目は",
        "改行で分かれます。",
        "脚注つきの文。 10-12 は残る。",  # a line break before "10": one space
        "改行をまたぐ文。 English words.",
        "項目一",
        "全角 空白",
    ]


def test_html_nested_skipped_elements_end_at_their_own_closing_tag():
    page = ('<div class="toc"><div><p>目次</p></div><div>目次の続き</div></div>'
            '<p>本文の段落</p><script>if (a < b) { x = "スクリプト"; }</script><p>最後の段落</p>')
    assert gc.html_to_paragraphs(page) == ["本文の段落", "最後の段落"]


def test_html_hidden_elements_are_dropped():
    page = ('<p>設定は<span hidden="true">隠れた文字</span><span style="display: none">'
            '見えない</span><span>ツール</span>から開きます。</p>')
    assert gc.html_to_paragraphs(page) == ["設定はツールから開きます。"]


def test_html_line_break_between_japanese_characters_is_no_space():
    assert gc.html_to_paragraphs("<p>日本語の\n  文と ASCII\nwords と\n<b>太字</b></p>") == \
        ["日本語の文と ASCII\nwords と太字"]


# ------------------------------------------------------------- encodings

SENTENCE = "日本語の文章を正しく読み取れるか確かめる。カタカナとひらがな、漢字。"


@pytest.mark.parametrize("encoding", ["utf-8", "euc_jp", "cp932", "iso-2022-jp"])
def test_decode_japanese_in_each_encoding(encoding):
    assert gc.decode_bytes(SENTENCE.encode(encoding)) == SENTENCE


def test_decode_strips_utf8_byte_order_mark():
    assert gc.decode_bytes(b"\xef\xbb\xbf" + SENTENCE.encode("utf-8")) == SENTENCE


def test_read_source_gunzips_euc_jp(tmp_path):
    path = tmp_path / "page.1.gz"
    with gzip.open(str(path), "wb") as f:
        f.write((".TH X 1\n.SH 名前\n" + SENTENCE + "\n").encode("euc_jp"))
    assert gc.read_source(str(path)) == ".TH X 1\n.SH 名前\n" + SENTENCE + "\n"


# ------------------------------------------------------------ line filter

def test_line_without_japanese_is_dropped():
    assert not gc.keep_line("Only English words here.")
    assert not gc.keep_line("１２３ＡＢＣ！")  # full-width, but not kana or kanji
    assert gc.keep_line("日本語")


def test_line_filter_threshold_is_15_percent_of_non_space_characters():
    # 3 Japanese characters among 20 non-space ones is exactly 15 %: kept;
    # one more ASCII letter makes it 3/21, under 15 %: dropped.
    assert gc.keep_line("abcdefghijklmnopq と同様")
    assert not gc.keep_line("abcdefghijklmnopqr と同様")
    assert gc.keep_line("abcdefghij klmnopq と同様")  # spaces do not count


def test_credit_lines_are_dropped_but_sentences_with_addresses_kept():
    assert not gc.keep_line("山田 太郎 <taro@example.jp>")
    assert not gc.keep_line("Rik Faith (faith@example.edu): エラーコードの値")
    assert gc.keep_line("バグ報告は bug-foo@example.org までお願いします。")


def test_paragraphs_are_nfc_with_whitespace_collapsed():
    decomposed = "か\u3099"  # か + combining dakuten = が
    assert gc.clean_paragraphs(["  テスト\t" + decomposed + "\u00a0文\u200b字  "]) == \
        ["テスト " + unicodedata.normalize("NFC", decomposed) + " 文字"]


# ------------------------------------------------------------ duplicates

def test_duplicate_paragraphs_are_removed_across_documents_keeping_the_first():
    dedup = gc.ParagraphDeduplicator()
    first = ["これは共通の段落です。", "一つ目の文書にだけある段落です。"]
    second = ["これは共通の段落です。", "二つ目の文書にだけある、少し長めの段落です。",
              "二つ目の文書にだけある、少し長めの段落です。"]
    assert dedup.accept(first) == first
    assert dedup.accept(second) == ["二つ目の文書にだけある、少し長めの段落です。"]


def test_document_with_under_20_japanese_characters_is_dropped_and_not_remembered():
    dedup = gc.ParagraphDeduplicator()
    short = ["短い文書です。"]  # 6 Japanese characters
    assert dedup.accept(short) is None
    long_enough = ["短い文書です。", "でもこの段落を足せば二十文字を超えます。"]
    assert dedup.accept(long_enough) == long_enough


def test_document_of_kanji_without_kana_is_not_japanese():
    chinese = ["这是一个中文文档，不是日文文档，所以应该被删除。这里没有假名。"]
    assert gc.ParagraphDeduplicator().accept(chinese) is None


PARAGRAPH_POOL = ["日本語の段落その%d番目です。" % i for i in range(8)] + ["短%d" % i for i in range(4)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.sampled_from(PARAGRAPH_POOL), max_size=6), max_size=8))
def test_deduplication_invariants(documents):
    dedup = gc.ParagraphDeduplicator()
    kept = [(doc, dedup.accept(doc)) for doc in documents]
    output = [p for _, fresh in kept if fresh for p in fresh]
    # No paragraph is written twice.
    assert len(output) == len(set(output))
    for doc, fresh in kept:
        if fresh is None:
            continue
        # A kept document keeps its own paragraphs, in order, with enough Japanese.
        positions = [doc.index(p) for p in fresh]
        assert positions == sorted(positions)
        assert gc.count_japanese("".join(fresh)) >= 20
        # A paragraph left out of a kept document appears in the output.
        assert all(p in output for p in doc)


# ------------------------------------------------------------- man pages

MAN_PAGE = r""".\" a comment line that must not appear
.TH TEST 1 "2024年1月" "GNU" "ユーザーコマンド"
.SH 名前
test \- テスト用のコマンド
.SH 書式
.B test
[\fIオプション\fR]
.SH 説明
.B test
は日本語の
説明文を表示する。
\fB太字\fPと\fIイタリック\fRを含む\(em記号。
.PP
次の段落。
.TP
.B \-v
詳しく表示する。
.nf
コード 行1
コード 行2
.fi
.SH 関連項目
.BR ls (1),
.BR cat (1)
"""

MAN_PAGE_PARAGRAPHS = [
    "名前",
    "test - テスト用のコマンド",
    "書式",
    "test [オプション]",
    "説明",
    "test は日本語の説明文を表示する。太字とイタリックを含む\u2014記号。",
    "次の段落。",
    "-v 詳しく表示する。",
    "コード 行1",
    "コード 行2",
    "関連項目",
]


NEEDS_GROFF = pytest.mark.skipif(not HAVE_GROFF, reason="groff not installed")


@pytest.mark.parametrize("use_groff", [False, pytest.param(True, marks=NEEDS_GROFF)],
                         ids=["builtin-stripper", "groff"])
def test_man_page_to_paragraphs(use_groff):
    assert gc.clean_paragraphs(gc.man_to_paragraphs(MAN_PAGE, use_groff)) == MAN_PAGE_PARAGRAPHS


def test_roff_escapes_are_resolved():
    assert gc.strip_roff_escapes(r"\fBa\fR\-b\(em\[u3042]\e\&c\s-1d\s0\*(lqe\*(rq\N'65'") == \
        "a-b\u2014\u3042\\cd\u201ce\u201dA"


def test_japanese_line_breaks_are_glued_for_groff_but_not_elsewhere():
    source = "日本語の\n文です。\nEnglish\n続き\n.B 太字\nの後\n最後 \n行\n"
    assert gc.glue_japanese_line_breaks(source) == \
        "日本語の\\c\n文です。\nEnglish\n続き\n.B 太字\nの後\\c\n最後\\c\n行\n"


def test_roff_heading_on_the_line_after_sh_is_its_own_paragraph():
    assert gc.strip_roff(".SH\n名前の見出し\n本文の一行目\n二行目です。\n") == \
        ["名前の見出し", "本文の一行目二行目です。"]


def test_man_page_alias_is_not_a_document(tmp_path):
    path = tmp_path / "alias.3"
    write(path, ".so man3/real.3\n")
    assert gc.read_documents(str(path), "man", use_groff=False) == []


# ------------------------------------------------------ --from end to end

LONG_A = "こんにちは、これは最初の文書です。十分な長さの日本語を含みます。"
COMMON = "共通の段落はここにあります。"
LONG_B = "二番目の文書の一行目は、ここにある少し長めの文章です。"
LONG_C = "三番目の文書ですが、これも十分に長い日本語の文です。"
LONG_EUC = "ＥＵＣ方式の符号で書かれた文書も、文字化けせずに正しく読めるはずです。"


def make_source_folder(root):
    write(root / "a.html", "<html><body><p>%s</p><p>%s</p></body></html>" % (LONG_A, COMMON))
    write(root / "b.txt", "%s\n%s\nEnglish only line\n\n\n%s\n" % (LONG_B, COMMON, LONG_C))
    write(root / "c" / "d.html", '<html><head><meta http-equiv="Content-Type" '
          'content="text/html; charset=EUC-JP"></head><body><p>%s</p></body></html>' % LONG_EUC,
          encoding="euc_jp")
    write(root / "short.txt", "短い。\n")
    write(root / "notes.md", "これは読まれない形式のファイルです。対象外の拡張子。\n")
    return root


EXPECTED_FROM_SHARD = shard([LONG_A, COMMON], [LONG_B], [LONG_C], [LONG_EUC])


def test_from_folder_builds_one_shard_named_after_it(tmp_path):
    source = make_source_folder(tmp_path / "mytext")
    out = tmp_path / "out"
    result = run_tool("--from", source, "--output_dir", out)
    assert result.returncode == 0, result.stderr
    assert os.listdir(str(out)) == ["mytext.txt"]
    assert read(out / "mytext.txt") == EXPECTED_FROM_SHARD
    assert "documents" in result.stdout and "mytext.txt" in result.stdout


def test_from_folder_with_man_page_works_without_groff(tmp_path):
    source = tmp_path / "pages"
    write(source / "test.1", MAN_PAGE)
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    env = dict(os.environ, PATH=str(empty_bin))  # no groff, no apt-get, nothing
    result = run_tool("--from", source, "--output_dir", tmp_path / "out", env=env)
    assert result.returncode == 0, result.stderr
    assert "groff not found" in result.stderr
    assert read(tmp_path / "out" / "pages.txt") == shard(MAN_PAGE_PARAGRAPHS)


def test_corpus_shards_read_back_unchanged(tmp_path):
    """A shard of the released corpus already obeys every rule, so feeding it
    back through --from must reproduce it exactly."""
    names = ["debian-edu-doc-ja.txt", "kicad-doc-ja.txt"]
    if not all(os.path.isfile(os.path.join(SHARED_CORPUS, n)) for n in names):
        pytest.skip("shared corpus not found at %s" % SHARED_CORPUS)
    source = tmp_path / "released"
    source.mkdir()
    for name in names:
        shutil.copy(os.path.join(SHARED_CORPUS, name), str(source / name))
    result = run_tool("--from", source, "--output_dir", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    expected = "".join(read(source / n).rstrip("\n") + "\n\n\n" for n in names)[:-2]
    assert read(tmp_path / "out" / "released.txt") == expected


def test_output_inside_the_source_folder_is_not_read_back(tmp_path):
    source = make_source_folder(tmp_path / "mytext")
    out = source / "corpus"
    assert run_tool("--from", source, "--output_dir", out).returncode == 0
    assert run_tool("--from", source, "--output_dir", out, "--force").returncode == 0
    assert read(out / "mytext.txt") == EXPECTED_FROM_SHARD


def test_second_run_keeps_existing_shard_and_force_rebuilds_it(tmp_path):
    source = make_source_folder(tmp_path / "mytext")
    out = tmp_path / "out"
    assert run_tool("--from", source, "--output_dir", out).returncode == 0
    before = os.stat(str(out / "mytext.txt"))
    time.sleep(0.01)
    again = run_tool("--from", source, "--output_dir", out)
    assert again.returncode == 0
    assert "exist" in again.stdout and "mytext.txt" in again.stdout
    after = os.stat(str(out / "mytext.txt"))
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    forced = run_tool("--from", source, "--output_dir", out, "--force")
    assert forced.returncode == 0
    assert os.stat(str(out / "mytext.txt")).st_ino != before.st_ino  # replaced by rename
    assert read(out / "mytext.txt") == EXPECTED_FROM_SHARD
    assert sorted(os.listdir(str(out))) == ["mytext.txt"]  # no temporary files left
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(str(out / "mytext.txt")).st_mode & 0o777 == 0o666 & ~umask


def test_folder_without_japanese_is_a_user_error(tmp_path):
    write(tmp_path / "src" / "en.txt", "English only.\n")
    result = run_tool("--from", tmp_path / "src", "--output_dir", tmp_path / "out")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert not os.path.exists(str(tmp_path / "out" / "src.txt"))


def test_atomic_write_keeps_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "shard.txt"
    write(path, "古い内容\n")

    def broken_replace(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(gc.os, "replace", broken_replace)
    with pytest.raises(OSError):
        gc.write_text_atomic(str(path), "新しい内容\n")
    assert read(path) == "古い内容\n"
    assert os.listdir(str(tmp_path)) == ["shard.txt"]


# ------------------------------------------------- Debian packages, offline

def build_deb(folder, package, files):
    """A real .deb (built with dpkg-deb) holding {path: text}."""
    root = folder / ("root-" + package)
    write(root / "DEBIAN" / "control", "Package: %s\nVersion: 1.0\nArchitecture: all\n"
          "Maintainer: Test <test@example.org>\nDescription: test data\n" % package)
    for path, text in files.items():
        write(root / path, text)
    deb = folder / ("%s_1.0_all.deb" % package)
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(deb)],
                   check=True, stdout=subprocess.DEVNULL)
    shutil.rmtree(str(root))
    return deb


@pytest.fixture
def offline_debian(tmp_path):
    """A cache with two packages and an apt-get that only records calls and fails."""
    if not HAVE_DPKG_DEB:
        pytest.skip("dpkg-deb not installed")
    cache = tmp_path / "debs"
    cache.mkdir()
    build_deb(cache, "fakedoc-ja", {
        "usr/share/doc/fakedoc-ja/html/index.html": "<p>%s</p><p>%s</p>" % (LONG_A, COMMON),
        "usr/share/man/ja/man1/fake.1.gz": gzip.compress(MAN_PAGE.encode("euc_jp")),
        "usr/share/man/ja/man1/alias.1.gz": gzip.compress(b".so man1/fake.1\n"),
        "usr/share/doc/fakedoc-ja/notes.txt": LONG_C + "\n",  # .txt is not read from packages
    })
    build_deb(cache, "fakeheld-ja", {
        "usr/share/doc/fakeheld-ja/index.html": "<p>%s</p><p>%s</p>" % (COMMON, LONG_B)})
    stub_bin = tmp_path / "stub-bin"
    log = tmp_path / "apt-get.log"
    write(stub_bin / "apt-get", '#!/bin/sh\necho "$@" >> "%s"\n'
          'echo "E: Unable to locate package $3" >&2\nexit 100\n' % log)
    os.chmod(str(stub_bin / "apt-get"), 0o755)
    env = dict(os.environ, PATH=str(stub_bin) + os.pathsep + os.environ.get("PATH", ""))
    return {"cache": cache, "env": env, "log": log, "out": tmp_path / "corpus",
            "held": tmp_path / "heldout"}


def run_packages(setup, *args):
    return run_tool("--output_dir", setup["out"], "--heldout_dir", setup["held"],
                    "--cache_dir", setup["cache"], *args, env=setup["env"])


def test_cached_debs_are_unpacked_without_download(offline_debian):
    s = offline_debian
    result = run_packages(s, "--packages", "fakedoc-ja", "--heldout_packages", "fakeheld-ja")
    assert result.returncode == 0, result.stderr
    assert not os.path.exists(str(s["log"]))  # apt-get never called
    # Sorted paths: the HTML page under doc/ comes before the man page; the
    # .so alias is not a document; the held-out shard loses the paragraph
    # it shares with the training shard.
    assert read(s["out"] / "fakedoc-ja.txt") == shard([LONG_A, COMMON], MAN_PAGE_PARAGRAPHS)
    assert read(s["held"] / "fakeheld-ja.txt") == shard([LONG_B])


def test_missing_shard_is_built_against_the_kept_ones(offline_debian):
    s = offline_debian
    assert run_packages(s, "--packages", "fakedoc-ja", "--heldout_packages").returncode == 0
    kept = os.stat(str(s["out"] / "fakedoc-ja.txt"))
    # fakeheld-ja now comes first but is the only shard built; it still
    # loses the paragraph the kept fakedoc-ja shard already has.
    result = run_packages(s, "--packages", "fakeheld-ja", "fakedoc-ja", "--heldout_packages")
    assert result.returncode == 0, result.stderr
    assert read(s["out"] / "fakeheld-ja.txt") == shard([LONG_B])
    after = os.stat(str(s["out"] / "fakedoc-ja.txt"))
    assert (after.st_ino, after.st_mtime_ns) == (kept.st_ino, kept.st_mtime_ns)


def test_unknown_package_alone_stops_with_one_line(offline_debian):
    result = run_packages(offline_debian, "--packages", "nosuch-ja", "--heldout_packages")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "nosuch-ja" in lines[0] and "apt-get update" in lines[0] and "--from" in lines[0]


def test_unknown_package_is_skipped_with_warning_when_others_work(offline_debian):
    s = offline_debian
    result = run_packages(s, "--packages", "fakedoc-ja", "nosuch-ja", "--heldout_packages")
    assert result.returncode == 0, result.stderr
    assert "nosuch-ja" in result.stderr and "skipped" in result.stderr
    assert os.listdir(str(s["out"])) == ["fakedoc-ja.txt"]


# ---------------------------------------------------------------- the CLI

def test_help_is_fast_and_lists_the_flags():
    start = time.monotonic()
    result = run_tool("--help")
    assert time.monotonic() - start < 10
    assert result.returncode == 0
    for flag in ["--packages", "--heldout_packages", "--output_dir", "--heldout_dir", "--from",
                 "--cache_dir", "--force", "manpages-ja-dev"]:
        assert flag in result.stdout


@pytest.mark.parametrize("args", [["--no_such_flag"], ["--from", "/no/such/folder"],
                                  ["--packages", "Bad;Name"]],
                         ids=["bad-flag", "missing-folder", "bad-package-name"])
def test_user_mistakes_exit_2_with_one_line(args, tmp_path):
    result = run_tool(*(args + ["--output_dir", tmp_path / "out", "--cache_dir", tmp_path / "c"]))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------ the real thing

@pytest.mark.slow
def test_real_download_matches_the_released_copy(tmp_path):
    """Downloads the four core packages (~90 MB) and compares with ../shared."""
    if not os.path.isdir(SHARED_CORPUS):
        pytest.skip("shared corpus not found at %s" % SHARED_CORPUS)
    if shutil.which("apt-get") is None or not HAVE_GROFF:
        pytest.skip("needs apt-get and groff")
    result = run_tool("--output_dir", tmp_path / "corpus", "--heldout_dir", tmp_path / "heldout",
                      "--cache_dir", tmp_path / "debs", timeout=1800)
    if result.returncode == 2 and "cannot download" in result.stderr:
        pytest.skip("no package download possible: " + result.stderr.strip())
    assert result.returncode == 0, result.stderr
    for name in ["debian-edu-doc-ja", "kicad-doc-ja"]:
        assert read(tmp_path / "corpus" / (name + ".txt")) == \
            read(os.path.join(SHARED_CORPUS, name + ".txt"))
    for name in ["manpages-ja", "gimp-help-ja"]:
        ours = read(tmp_path / "corpus" / (name + ".txt")).splitlines()
        released = read(os.path.join(SHARED_CORPUS, name + ".txt")).splitlines()
        assert len(set(ours) & set(released)) >= 0.999 * len(set(released))
    assert os.path.getsize(str(tmp_path / "heldout" / "debian-policy-ja.txt")) > 10000
