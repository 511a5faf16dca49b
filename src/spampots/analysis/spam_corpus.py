"""A labelled spam corpus for measuring campaign grouping (tests/test_campaigns_eval.py,
bench/campaigns.py): campaigns of varied templates, each message obfuscated the way real spam
is (random tokens, the recipient's name in subject and body, word salad, spintax, HTML and plain
variants, rotating URLs, base64 and quoted-printable bodies, different charsets).
Deterministic for a seed. Addresses and links use reserved names (RFC 2606) only.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
import base64
import quopri
from email.mime.multipart import MIMEMultipart
from email.mime.nonmultipart import MIMENonMultipart
from email.utils import formatdate

NAMES = ("john", "maria", "peter", "ana", "carlos", "linda", "paulo", "susan", "mike", "julia", "roberto",
         "karen", "david", "fernanda", "thomas", "lucia", "george", "helena", "brian", "sofia")
# Word salad is drawn from real words (hash busting) and made-up ones.
SALAD = ("apple river window quiet yellow thunder pencil garden rocket silver morning candle forest "
         "bottle engine marble winter summer planet copper button violin ladder orange pillow "
         "harbor blanket saddle meadow lantern feather castle anchor basket jungle kettle mirror "
         "needle ocean parrot quilt ribbon shadow tunnel velvet wagon zipper acorn breeze canyon "
         "desert eagle fabric glacier hammer island jacket kitten lemon magnet nectar oyster pepper "
         "quartz raven saucer tomato umbrella valley walnut yogurt zebra almond bridge cactus "
         "dolphin ember falcon goblet hazel igloo jasmine koala lilac mango nutmeg olive peach").split()
_SYL = ("ba be bi bo bu ca ce co da de di do fa fe fi ga go ha ja ka ke ko la le li lo ma me mi mo "
        "na ne no pa pe po ra re ri ro sa se si so ta te ti to va ve vi za").split()
TLDS = ("example", "test", "invalid")


@dataclass(frozen=True)
class Template:
    subject: str  # {name}, {tok}, {n}: filled per message
    body: str  # {name}, {url}, {tok}, {n}, {salad}
    lang_charsets: tuple[str, ...] = ("utf-8", "iso-8859-1")
    salad: bool = False


# 24 campaigns; 0 and 1 share the subject "hello", 2 and 3 share "Re: your order".
TEMPLATES: tuple[Template, ...] = (
    Template("hello", "Hi {name},\nI found your profile and I would love to chat. I am a lonely girl living "
             "near you, look at my pictures here {url} and write me back soon.\nKisses"),
    Template("hello", "Good day,\nWe are hiring remote assistants for a logistics company. The work takes two "
             "hours a day and pays {n} dollars weekly. Reply with your resume or apply at {url}\nHR department"),
    Template("Re: your order", "Dear customer,\nYour order number {n} has been shipped. Track the delivery of "
             "your package with the link below.\n{url}\nThank you for shopping with us."),
    Template("Re: your order", "Hello {name},\nThe payment for your recent order was declined by the bank. "
             "Update your billing information within 24 hours or the order will be cancelled: {url}\nSupport team"),
    Template("{name}, cheap meds {tok}", "Best prices on pills without prescription! Viagra, Cialis and more "
             "delivered discreetly to your door. Order now at {url} and save up to {n} percent.\n{salad}",
             salad=True),
    Template("Replica watches {tok}", "Luxury replica watches of the finest quality. Rolex, Omega, Breitling "
             "from only {n} dollars. Visit our online store {url} today.\nCode: {tok}\n{salad}", salad=True),
    Template("Seu cartão foi bloqueado", "Prezado(a) {name},\nidentificamos uma tentativa de acesso não "
             "autorizada ao seu cartão. Para desbloquear, confirme seus dados em {url}\nAtenciosamente, "
             "Central de Segurança", ("iso-8859-1", "utf-8", "windows-1252")),
    Template("Promoção imperdível {tok}", "Olá {name}! Só hoje: smartphones com até {n}% de desconto e frete "
             "grátis para todo o Brasil. Aproveite agora mesmo em {url}\n{salad}", ("utf-8", "iso-8859-1"),
             salad=True),
    Template("Oferta de empleo", "Estimado {name},\nle ofrecemos un trabajo desde casa con ingresos de {n} "
             "euros al mes. No necesita experiencia. Más información en {url}\nSaludos cordiales",
             ("iso-8859-1", "utf-8")),
    Template("Ihr Paket wartet", "Sehr geehrte Kundin, sehr geehrter Kunde,\nIhr Paket konnte nicht "
             "zugestellt werden. Bitte bestätigen Sie Ihre Adresse unter {url} innerhalb von {n} Tagen.\n"
             "Ihr Versandteam", ("iso-8859-1", "utf-8")),
    Template("Gagnez un iPhone {tok}", "Félicitations {name} ! Vous avez été sélectionné pour gagner un "
             "iPhone. Répondez à trois questions sur {url} pour réclamer votre prix.", ("iso-8859-1", "utf-8")),
    Template("Выгодное предложение", "Здравствуйте!\nНаша компания предлагает кредиты под низкий процент "
             "без справок. Подробности на сайте {url} или по телефону {n}.", ("koi8-r", "utf-8", "windows-1251")),
    Template("{name}, your account will be suspended", "Dear {name},\nWe noticed unusual sign-in activity "
             "on your mailbox. To avoid suspension, verify your account at {url} within 48 hours.\n"
             "Mail Administrator"),
    Template("Investment opportunity {n}", "Dear friend,\nI am a banker and I have a proposal for a transfer "
             "of {n} million dollars left by a deceased client. Contact me privately at {email} for details."
             "\nRegards, Mr. Williams"),
    Template("Lose weight fast", "[Doctors hate|Experts hate|Nobody believes] this simple trick! Burn belly fat "
             "in {n} days without diet or exercise. {salad} Watch the [free|short] video at {url}\n{salad}",
             salad=True),
    Template("{tok} Casino bonus", "Get a welcome bonus of {n} free spins at the best online casino. "
             "Register in one minute: {url}\nPlay responsibly."),
    Template("Invoice {tok} attached", "Please find attached the invoice {tok} for the services provided "
             "last month. Kindly process the payment at your earliest convenience.\nAccounts receivable"),
    Template("[Cheap|Discount|Original] software {tok}", "[Original|Genuine] software at [low|lowest] prices: "
             "Windows, Office, Photoshop. {salad}\nInstant download after payment. Catalogue: {url}\n{salad}",
             salad=True),
    Template("Meet singles tonight", "Thousands of singles in your area are waiting to meet you. Sign up "
             "free at {url} and start chatting with {name} tonight."),
    Template("SEO services for your website", "Hello,\nI checked your website and found {n} problems that "
             "keep it off the first page of search results. We can fix them at a low price. Reply for a "
             "free audit or visit {url}"),
    Template("お得な情報", "こんにちは。今だけ特別価格でブランド品を販売しています。詳細はこちら {url} をご覧ください。",
             ("iso-2022-jp", "utf-8", "shift_jis")),
    Template("Your tax refund", "We have determined that you are eligible to receive a tax refund of {n} "
             "dollars. Submit the refund form at {url} to receive the payment.\nRevenue Service"),
    Template("Work from home {tok}", "Make {n} dollars a day from home with our automated trading system. "
             "No experience needed, join {name} and thousands of others at {url}\n{salad}", salad=True),
    Template("Domain expiration notice", "Notice: the domain registration for your website expires in {n} "
             "days. Renew now at {url} to avoid losing your domain and email service.\nDomain services"),
)


@dataclass(frozen=True)
class Labelled:
    label: int  # the campaign (index into TEMPLATES)
    rcpt: str
    raw: bytes


def _word(rng: random.Random) -> str:
    return rng.choice(SALAD) if rng.random() < 0.6 else "".join(rng.choice(_SYL) for _ in range(rng.randint(2, 4)))


def _tok(rng: random.Random) -> str:
    kind = rng.randrange(3)
    if kind == 0:
        return "".join(rng.choice("0123456789abcdef") for _ in range(rng.randint(8, 12)))
    if kind == 1:
        return "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(rng.randint(6, 9)))
    return "#" + str(rng.randint(1000, 999999))


def _url(rng: random.Random) -> str:
    host = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(5, 10)))
    path = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(rng.randint(4, 10)))
    return f"http://{host}.{rng.choice(TLDS)}/{path}?id={rng.randint(1, 99999)}"


_SPIN_RE = re.compile(r"\[([^\[\]]*\|[^\[\]]*)\]")


def _fill(s: str, rng: random.Random, name: str, html: bool) -> str:
    """One message's text: spintax [a|b] chosen, placeholders filled, each {salad} its own words."""
    s = _SPIN_RE.sub(lambda m: rng.choice(m.group(1).split("|")), s)
    while "{salad}" in s:
        s = s.replace("{salad}", " ".join(_word(rng) for _ in range(rng.randint(15, 40))), 1)
    url = _url(rng)
    out = (s.replace("{name}", name.capitalize()).replace("{tok}", _tok(rng)).replace("{n}", str(rng.randint(2, 990)))
           .replace("{email}", f"{_word(rng)}{rng.randint(1, 99)}@{_word(rng)}.example"))
    if html:
        out = out.replace("{url}", f'<a href="{url}">{url}</a>')
        return "<html><body>" + "".join(f"<p>{ln}</p>" for ln in out.split("\n")) + "</body></html>"
    return out.replace("{url}", url)


def _part(text: str, subtype: str, charset: str, cte: str) -> MIMENonMultipart:
    try:
        data = text.encode(charset)
    except UnicodeEncodeError:
        charset, data = "utf-8", text.encode()
    part = MIMENonMultipart("text", subtype, charset=charset)
    if cte == "base64":
        part.set_payload(base64.encodebytes(data).decode("ascii"))
    else:
        part.set_payload(quopri.encodestring(data).decode("ascii"))
    part["Content-Transfer-Encoding"] = cte
    return part


def message(t: Template, rng: random.Random, i: int, label: int) -> Labelled:
    name = rng.choice(NAMES)
    rcpt = f"{name}.{rng.choice(('smith', 'silva', 'jones', 'souza'))}{rng.randint(1, 99)}@mail.example.org"
    charset = rng.choice(t.lang_charsets)
    cte = rng.choice(("base64", "quoted-printable"))
    shape = rng.choice(("plain", "html", "alternative"))
    body_seed = rng.random()
    if shape == "alternative":  # one filling, shown twice
        r1, r2 = random.Random(body_seed), random.Random(body_seed)
        msg = MIMEMultipart("alternative")
        msg.attach(_part(_fill(t.body, r1, name, False), "plain", charset, cte))
        msg.attach(_part(_fill(t.body, r2, name, True), "html", charset, cte))
    else:
        msg = _part(_fill(t.body, rng, name, shape == "html"), shape, charset, cte)
    sender = _word(rng) + str(rng.randint(1, 999))
    msg["From"] = f"{sender.capitalize()} <{sender}@{_word(rng)}.example>"
    msg["To"] = rcpt
    msg["Subject"] = _fill(t.subject, rng, name, False)
    msg["Date"] = formatdate(1767225600 + i * 60)
    msg["Message-ID"] = f"<{_tok(rng).strip('#')}.{i}@{_word(rng)}.example>"
    return Labelled(label, rcpt, msg.as_bytes())


def corpus(per_campaign: int = 14, seed: int = 14, campaigns: int = len(TEMPLATES)) -> list[Labelled]:
    """`per_campaign` messages of each of the first `campaigns` templates, interleaved."""
    rng = random.Random(seed)
    out = [message(TEMPLATES[c], rng, k * campaigns + c, c) for k in range(per_campaign) for c in range(campaigns)]
    return out
