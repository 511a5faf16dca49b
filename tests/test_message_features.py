"""message_features.parse: what a message is made of, from attacker bytes, bounded and never a crash."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings, strategies as st

pytest.importorskip("tlsh")
pytest.importorskip("lingua")
pytest.importorskip("tldextract")

from spampots.analysis import campaigns as cp  # noqa: E402
from spampots.analysis.message_features import Limits, mask, parse  # noqa: E402

FUZZ = settings(max_examples=200, deadline=None)

MULTI = (b"From: \"Shop\" <news@mail.shop.example.co.uk>\r\nReply-To: x@Reply.example.com.br\r\n"
         b"Subject: =?iso-8859-1?q?Promo=E7=E3o_para_voc=EA?=\r\nMessage-ID: <A1b2C3.99871@mx.example>\r\n"
         b"X-Mailer: Bulk 2.0\r\nDate: Thu, 01 Jan 2026 00:00:10 +0000\r\nMIME-Version: 1.0\r\n"
         b"Content-Type: multipart/mixed; boundary=outer\r\n\r\n--outer\r\n"
         b"Content-Type: multipart/alternative; boundary=alt\r\n\r\n--alt\r\n"
         b"Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
         b"Ol=E1 Maria, compre agora em https://www.loja.example.com.br/p?id=7 ou ligue +55 11 4002-8922.\r\n"
         b"Escreva para vendas@loja.example.com.br\r\n--alt\r\nContent-Type: text/html; charset=utf-8\r\n"
         b"Content-Transfer-Encoding: base64\r\n\r\n"
         + base64.encodebytes("<p>Olá Maria, compre <a href='https://www.loja.example.com.br/p?id=7'>aqui</a></p>"
                              .encode()) +
         b"--alt--\r\n--outer\r\nContent-Type: application/pdf; name=boleto.pdf\r\n"
         b"Content-Disposition: attachment; filename=\"boleto.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
         + base64.encodebytes(b"%PDF-1.4 fake") + b"--outer--\r\n")


def test_a_multipart_message() -> None:
    f = parse(MULTI, received=1767225600.0, rcpts=["maria.silva@mail.example.org"])
    assert f.subject == "Promoção para você"
    assert (f.from_domain, f.reply_to_domain) == ("mail.shop.example.co.uk", "reply.example.com.br")
    assert f.message_id_shape == "a9a9a9.9@mx.example"
    assert f.x_mailer == "Bulk 2.0" and f.date_skew_s == pytest.approx(10.0)
    assert [p.content_type for p in f.parts] == ["text/plain", "text/html", "application/pdf"]
    assert f.attachments == ["boleto.pdf"] and f.parts[2].size == len(b"%PDF-1.4 fake")
    assert "Olá Maria, compre agora" in f.text and "<a" not in f.text
    assert "aqui" not in f.text  # the HTML alternative of a plain part is not read twice
    assert f.urls == ["https://www.loja.example.com.br/p?id=7"] and f.url_domains == ["example.com.br"]
    assert f.emails == ["vendas@loja.example.com.br"] and f.phones == ["+551140028922"]
    assert f.language == "pt"
    assert "_name_" in f.layout and "_url_" in f.layout and "maria" not in f.layout
    assert f.tlsh.startswith("T1") and len(f.layout_hash) == 16 and not f.defects


def test_layout_masks_what_spam_varies() -> None:
    a = mask("Hi John, code A7F3K9QX, see http://a.example/1 or call 555-123-4567. pay 30 usd", ("john",))
    b = mask("Hi Ana, code 88bd01ff2e, see http://zz.test/q?2 or call 555-987-0000. pay 45 usd", ("ana",))
    assert a == b


def test_limits_cut_and_count() -> None:
    many = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + b"".join(
        b"--b\r\nContent-Type: text/plain\r\n\r\npart %d\r\n" % i for i in range(100)) + b"--b--\r\n"
    f = parse(many, limits=Limits(max_parts=10))
    assert len(f.parts) <= 10 and f.defects.get("parts_cut") == 1
    deep = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i) for i in range(30))
    f = parse(deep + b"Content-Type: text/plain\r\n\r\nbottom\r\n", limits=Limits(max_depth=4))
    assert f.defects.get("too_deep") == 1
    big = b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(b"x" * 200_000)
    f = parse(big, limits=Limits(max_decoded=1000, max_text=500))
    assert f.defects.get("part_cut") and len(f.text) <= 500 and f.parts[0].size <= 1000
    assert f.text == "x" * 500  # decoded, not the base64 text
    f = parse(b"Subject: x\r\n\r\n" + b"y" * 5000, limits=Limits(max_bytes=1000))
    assert f.size == 5014 and f.defects.get("message_cut") == 1
    f = parse(b"Content-Type: text/plain; charset=no-such-charset\r\n\r\nhello\r\n")
    assert f.text.strip() == "hello" and f.defects.get("bad_charset") == 1


_HEADERS = st.sampled_from([b"Subject: ", b"From: ", b"Reply-To: ", b"Message-ID: ", b"Date: ",
                            b"Content-Type: ", b"Content-Transfer-Encoding: ", b"Content-Disposition: "])
_VALUES = st.sampled_from([b"multipart/mixed; boundary=b", b"multipart/alternative; boundary=\"b\"",
                           b"text/html; charset=\"x-unknown\"", b"base64", b"quoted-printable",
                           b"=?utf-8?b?!!!?=", b"=?bogus?q?=ZZ?=", b"attachment; filename*=utf-8''%ff%fe",
                           b"Thu, 99 Foo 2026 99:99:99", b"<@@>", b"\xff\xfe\x00"]) | st.binary(max_size=60)
_LINE = st.tuples(_HEADERS, _VALUES).map(lambda t: t[0] + t[1] + b"\r\n")
_BODY = st.lists(st.sampled_from([b"--b\r\n", b"--b--\r\n", b"\r\n", b"=\r\n", b"=ZZ", b"<a href=http://x.example>",
                                  b"PGh0bWw+", b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"])
                 | st.binary(max_size=80), max_size=30).map(b"".join)


@FUZZ
@given(st.lists(_LINE, max_size=12), _BODY, st.lists(st.text(max_size=20), max_size=3))
def test_parse_never_raises_and_stays_bounded(headers, body, rcpts) -> None:
    lim = Limits(max_parts=8, max_depth=3, max_decoded=4096, max_text=2048, max_items=5)
    f = parse(b"".join(headers) + b"\r\n" + body, received=0.0, rcpts=rcpts, limits=lim)
    assert len(f.text) <= lim.max_text and len(f.layout) <= lim.max_text
    assert len(f.parts) <= lim.max_items and len(f.urls) <= lim.max_items and len(f.emails) <= lim.max_items
    assert all(p.size <= lim.max_decoded for p in f.parts)
    cp.items(f.layout)  # and the campaign step takes whatever the parser gives


@FUZZ
@given(st.binary(max_size=3000))
def test_parse_any_bytes(raw) -> None:
    parse(raw, received=1.0, rcpts=["a.b@c.example"])
