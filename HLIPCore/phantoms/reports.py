"""Free-text radiology reports that agree with the phantom: label, side, lobe, size, and only the sequences acquired.

A report has EXAMINATION, (sometimes) CLINICAL HISTORY, TECHNIQUE, FINDINGS and IMPRESSION. Wording varies by
synonyms, sentence order, British/American spelling and incidental normal findings; negations ("No evidence of
haemorrhage") are common, as in real reports. The impression names the diagnosis with the Pub-Brain-5 words
(acute stroke/infarct, glioma, meningioma, metastasis/metastases; normal studies "no significant abnormality"),
and never names another class's diagnosis, so the label can be read off the impression. Each class's own
Pub-Brain-5 prompt word ("Acute stroke", "Glioma", "Meningioma", "Metastasis", "No significant abnormalities")
is among the impressions' wordings, and the words of the reference's template ("This MRI study shows: {}.") occur
too (a COMPARISON line, an impression lead-in): a text tower learns only the words its reports use.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np

NUMBERS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
TERRITORY_NAMES = {"MCA": ("middle cerebral artery (MCA)", "MCA"), "ACA": ("anterior cerebral artery (ACA)", "ACA"),
                   "PCA": ("posterior cerebral artery (PCA)", "PCA")}
SEQUENCE_WORDS = {"T1": "T1-weighted", "T2": "T2-weighted", "FLAIR": "FLAIR", "T1c": "post-contrast T1-weighted",
                  "DWI": "diffusion-weighted (DWI)"}


class _Writer:
    """Random choices and spelling for one report."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.british = bool(rng.random() < 0.5)

    def pick(self, *options):
        return options[int(self.rng.integers(len(options)))]

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def spell(self, text: str) -> str:
        if self.british:
            for us, gb in (("hemorrhag", "haemorrhag"), ("edema", "oedema"), ("gray", "grey"), ("centered", "centred"),
                           ("ischemi", "ischaemi")):
                text = text.replace(us, gb)
        else:
            for gb, us in (("haemorrhag", "hemorrhag"), ("oedema", "edema"), ("grey", "gray"), ("centred", "centered"),
                           ("ischaemi", "ischemi")):
                text = text.replace(gb, us)
        return text


def where(findings: Dict, w: _Writer) -> str:
    """'left frontal lobe', 'right basal ganglia', ..."""
    side, lobe = findings["side"], findings["lobe"]
    if lobe in ("frontal", "parietal", "temporal", "occipital"):
        return f"{side} {lobe} lobe"
    if lobe == "thalamic":
        return f"{side} thalamus"
    if lobe == "cerebellar":
        return f"{side} cerebellar hemisphere"
    if lobe == "brainstem":
        return f"{side} side of the brainstem"
    return f"{side} basal ganglia"


def size_text(size_mm: Sequence[float], w: _Writer) -> str:
    tr, ap, cc = (float(v) for v in size_mm)
    biggest = max(tr, ap, cc)
    return w.pick(f"measuring {ap / 10:.1f} x {tr / 10:.1f} x {cc / 10:.1f} cm (AP x TR x CC)",
                  f"measuring approximately {ap / 10:.1f} x {tr / 10:.1f} cm in axial dimensions",
                  f"measuring up to {biggest:.0f} mm", f"approximately {biggest / 10:.1f} cm in greatest dimension")


def technique(sequences: Sequence[Tuple[str, str]], w: _Writer) -> str:
    parts = [f"{plane} {SEQUENCE_WORDS[seq]}" for seq, plane in sequences]
    contrast = any(seq == "T1c" for seq, _ in sequences)
    text = w.pick("Multiplanar multisequence MR imaging of the brain", "MRI of the brain", "Brain MRI") + \
        " was performed" + (" without and with intravenous gadolinium" if contrast else " without contrast") + \
        ": " + ", ".join(parts) + "."
    return text


def _normal_lines(w: _Writer, seqs: set, skip: Sequence[str] = ()) -> List[str]:
    """Statements of normality (and harmless incidentals) a report adds around its main finding."""
    lines = {
        "ventricles": w.pick("The ventricles and sulci are normal in size and configuration.",
                             "Ventricular size and configuration are within normal limits.",
                             "The ventricular system is normal in size."),
        "shift": w.pick("No midline shift.", "There is no midline shift.", "No mass effect or midline shift."),
        "hemorrhage": w.pick("No evidence of intracranial hemorrhage.", "No intracranial hemorrhage.",
                             "There is no hemorrhage."),
        "extra": w.pick("No extra-axial collection.", "No extra-axial fluid collection is seen."),
        "flow": w.pick("The major intracranial flow voids are preserved.", "Normal arterial flow voids."),
        "gw": w.pick("Grey-white matter differentiation is preserved.", "Normal grey-white matter differentiation."),
        "fossa": w.pick("The posterior fossa structures are unremarkable.", "The brainstem and cerebellum are normal."),
    }
    if "DWI" in seqs:
        lines["dwi"] = w.pick("No restricted diffusion.", "No focus of restricted diffusion to suggest acute ischemia.")
    if "T1c" in seqs:
        lines["enh"] = w.pick("No abnormal intracranial enhancement.", "No pathological enhancement.")
    incidental = [w.pick("Mild mucosal thickening in the right maxillary sinus.",
                         "Mild mucosal thickening in the left maxillary sinus.",
                         "The paranasal sinuses and mastoid air cells are clear.",
                         "The visualised orbits are unremarkable.", "Small mucous retention cyst in a maxillary sinus.",
                         "The mastoid air cells are clear.")]
    if seqs & {"T2", "FLAIR"} and w.chance(0.3):
        incidental.append("A few punctate nonspecific white matter T2/FLAIR hyperintensities, within normal limits for age.")
    keys = [k for k in lines if k not in skip]
    keep = [lines[k] for k in keys if w.chance(0.7)]
    return keep + incidental


def _stroke(f: Dict, w: _Writer, seqs: set) -> Tuple[List[str], str]:
    place = where(f, w)
    long_name, short = TERRITORY_NAMES[f["territory"]]
    deep = "deep" in f.get("branch", "")
    territory = f"{f['side']} {long_name} territory" if not deep else \
        f"{f['side']} lenticulostriate (deep {short}) territory"
    size = size_text(f["size_mm"], w)
    lines = []
    if "DWI" in seqs:
        lines.append(w.pick(
            f"There is an area of restricted diffusion in the {place}, {size}, within the {territory}.",
            f"Restricted diffusion is seen involving the cortex and subcortical white matter of the {place} "
            f"({territory}), {size}.",
            f"High signal on diffusion-weighted images with reduced diffusivity in the {place}, {size}, conforming "
            f"to the {territory}."))
        if seqs & {"T2", "FLAIR"}:
            lines.append(w.pick("There is corresponding T2/FLAIR hyperintensity with mild gyral swelling.",
                                "Corresponding FLAIR signal abnormality is present, in keeping with an acute timeframe."))
    else:
        lines.append(w.pick(
            f"There is T2/FLAIR hyperintensity with gyral swelling in the {place}, {size}, within the {territory}.",
            f"Cortical and subcortical T2 hyperintensity and swelling in the {place} ({territory}), {size}."))
    if "T1c" in seqs:
        lines.append(w.pick("No abnormal enhancement.", "No associated enhancement."))
    lines.append(w.pick("No hemorrhagic transformation.", "There is no evidence of hemorrhagic transformation."))
    lines.append(w.pick("Mild local sulcal effacement without midline shift.", "No significant mass effect."))
    impression = w.pick(f"Acute infarct in the {territory}.", f"Acute ischemic stroke in the {territory}.",
                        f"Findings are consistent with an acute stroke involving the {place} ({territory}).",
                        f"Acute {f['side']} {short} territory infarction.", f"Acute stroke, {territory}.")
    return lines, impression


def _glioma(f: Dict, w: _Writer, seqs: set) -> Tuple[List[str], str]:
    place = where(f, w)
    size = size_text(f["size_mm"], w)
    lines = [w.pick(f"There is an intra-axial mass centred in the {place} white matter, {size}.",
                    f"An infiltrative intra-axial mass is present in the {place}, {size}.",
                    f"Intra-axial space-occupying lesion in the {place}, {size}.")]
    if seqs & {"T2", "FLAIR"}:
        lines.append(w.pick("It is heterogeneously T2 hyperintense, with surrounding FLAIR hyperintense vasogenic edema "
                            "extending into the adjacent white matter.",
                            "The lesion is hyperintense on T2/FLAIR with extensive surrounding edema."))
    if "T1" in seqs:
        lines.append("It is hypointense on T1-weighted images.")
    if "T1c" in seqs:
        lines.append(w.pick("There is thick, irregular, heterogeneous peripheral enhancement surrounding a central "
                            "non-enhancing necrotic component.",
                            "Heterogeneous irregular rim enhancement with central necrosis.")
                     if f.get("necrosis") else
                     w.pick("There is faint patchy enhancement.", "Only minimal patchy enhancement is seen."))
    lines.append(w.pick("Local mass effect with effacement of the adjacent sulci.",
                        "There is mass effect on the adjacent sulci without herniation."))
    lines.append(w.pick("No intratumoral hemorrhage.", "No evidence of hemorrhage."))
    grade = "high-grade glioma" if f.get("necrosis") else "glioma"
    if "T1c" in seqs and f.get("necrosis"):
        impression = w.pick(f"Necrotic, heterogeneously enhancing intra-axial {place} mass with surrounding edema, most "
                            f"consistent with {grade} (glioblastoma).",
                            f"{place.capitalize()} mass, most consistent with a high-grade glioma.",
                            f"{place.capitalize()} high-grade glioma.")
    else:
        impression = w.pick(f"Intra-axial {place} mass with surrounding edema, most consistent with a {grade}.",
                            f"{place.capitalize()} infiltrative mass, likely glioma." +
                            ("" if "T1c" in seqs else " Post-contrast imaging is recommended."),
                            f"{place.capitalize()} glioma.")
    return lines, impression


def _meningioma(f: Dict, w: _Writer, seqs: set) -> Tuple[List[str], str]:
    side, lobe = f["side"], f["lobe"]
    lobe = lobe if lobe in ("frontal", "parietal", "temporal", "occipital") else "frontoparietal"
    site = f"{side} parasagittal {lobe}" if f.get("parasagittal") else f"{side} {lobe} convexity"
    size = size_text(f["size_mm"], w)
    lines = [w.pick(f"There is an extra-axial, dural-based mass along the {site}, {size}.",
                    f"A well-circumscribed extra-axial mass with a broad dural base is present at the {site}, {size}.")]
    if seqs & {"T1", "T2", "FLAIR"}:
        lines.append(w.pick("It is isointense to grey matter on T1 and T2-weighted images.",
                            "The lesion is approximately isointense to cortex on non-contrast sequences."))
    if seqs & {"T2", "FLAIR"}:
        lines.append(w.pick("A thin CSF cleft separates it from the underlying brain.",
                            "There is a CSF cleft between the mass and the adjacent cortex."))
    if "T1c" in seqs:
        lines.append(w.pick("It enhances avidly and homogeneously, with an enhancing dural tail.",
                            "There is intense homogeneous enhancement and a dural tail."))
    if f.get("edema") and seqs & {"T2", "FLAIR"}:
        lines.append("Mild vasogenic edema is present in the underlying white matter.")
    else:
        lines.append(w.pick("No significant edema in the underlying brain parenchyma.", "No parenchymal edema."))
    lines.append("Mild mass effect on the adjacent cortex, without midline shift.")
    impression = w.pick(f"Extra-axial dural-based {site} mass, most consistent with a meningioma.",
                        f"{site.capitalize()} meningioma.",
                        f"Findings are typical of a meningioma along the {site}.")
    return lines, impression


def _metastasis(f: Dict, w: _Writer, seqs: set) -> Tuple[List[str], str]:
    n = f["count"]
    lesions = f["lesions"]
    places = list(dict.fromkeys(where(d, w) for d in lesions))
    place_text = places[0] if len(places) == 1 else ", ".join(places[:-1]) + " and " + places[-1]
    largest = lesions[0]
    lines = [w.pick(f"There are {NUMBERS.get(n, n)} ring-enhancing lesions at the grey-white matter junction, "
                    f"in the {place_text}.",
                    f"{NUMBERS.get(n, n).capitalize()} rim-enhancing lesions are seen at the grey-white junction "
                    f"involving the {place_text}."),
             f"The largest is in the {where(largest, w)}, {size_text(largest['size_mm'], w)}."]
    if seqs & {"T2", "FLAIR"}:
        lines.append(w.pick("They are surrounded by vasogenic edema disproportionate to their size.",
                            "Each lesion has surrounding FLAIR hyperintense edema."))
    lines.append(w.pick("No hemorrhage.", "No evidence of intralesional hemorrhage."))
    side = f["side"]
    extent = "bilateral" if side == "bilateral" else f"{side} hemispheric"
    impression = w.pick(f"Multiple ring-enhancing {extent} lesions at the grey-white junction, most consistent with "
                        f"metastases.", f"Multiple {extent} brain metastases.",
                        f"Findings in keeping with metastatic disease ({NUMBERS.get(n, n)} lesions, {extent}).",
                        f"{NUMBERS.get(n, n).capitalize()} enhancing {extent} lesions, compatible with metastasis.",
                        f"Metastasis ({NUMBERS.get(n, n)} lesions, {extent}).")
    return lines, impression


HISTORY = {
    "normal": ("Headache.", "Dizziness.", "Chronic headaches, rule out structural abnormality.", "Vertigo."),
    "stroke": ("Sudden onset {contra}-sided weakness.", "Acute {contra} hemiparesis and speech disturbance.",
               "Stroke code."),
    "glioma": ("New-onset seizure.", "Progressive headache and personality change.", "Seizure."),
    "meningioma": ("Headache.", "Incidental finding on CT, further characterisation.", "Seizure."),
    "metastasis": ("Known lung cancer, staging.", "History of breast carcinoma, new headache.",
                   "Melanoma, staging."),
}
# normal statements that the main finding already covers, or that it would contradict
SKIP_NORMAL = {
    "stroke": ("hemorrhage", "shift", "dwi", "enh", "gw"),
    "glioma": ("hemorrhage", "shift", "dwi", "enh"),
    "meningioma": ("hemorrhage", "shift", "enh", "extra"),
    "metastasis": ("hemorrhage", "shift", "dwi", "enh", "gw", "fossa"),
}
# (a training view of FINDINGS and IMPRESSION only, `report_text: sections`, never reads COMPARISON: there the
# impression lead-in is what teaches the template's words)
COMPARISONS = ("None.", "No prior study is available for comparison.",
               "None; this is the first MRI study of the brain.")
# an impression that is a noun phrase can be a sentence of its own: "This MRI study shows ..." (the words of the
# reference's zero-shot template, which a text tower trained only on these reports would otherwise never read)
LEAD_INS = ("This MRI study shows ", "The study shows ")
NO_LEAD_IN = ("Findings", "Normal MRI", "Unremarkable MRI")


def _with_lead_in(impression: str, w: _Writer) -> str:
    if impression.startswith(NO_LEAD_IN) or not w.chance(0.35):
        return impression
    first = impression.split(" ", 1)[0]
    keep_case = first.isupper() or any(c.isdigit() for c in first)  # "MCA", "T2"
    return w.pick(*LEAD_INS) + (impression if keep_case else impression[0].lower() + impression[1:])


NORMAL_IMPRESSIONS = ("No acute intracranial abnormality.", "No significant abnormalities.", "Normal MRI of the brain.",
                      "Unremarkable MRI of the brain.", "No significant intracranial abnormality.")


def make_report(findings: Dict, sequences: Sequence[Tuple[str, str]], rng: np.random.Generator) -> str:
    """The report text for a lesion's `findings` when `sequences` ((sequence, plane) pairs) were acquired."""
    w = _Writer(rng)
    label = findings["label"]
    seqs = {s for s, _ in sequences}
    contrast = "T1c" in seqs
    sections = ["EXAMINATION: MRI brain " + ("without and with contrast." if contrast else "without contrast.")]
    if w.chance(0.7):
        contra = {"left": "right", "right": "left"}.get(findings.get("side"), "left")
        sections.append("CLINICAL HISTORY: " + w.pick(*HISTORY[label]).format(contra=contra))
    sections.append("TECHNIQUE: " + technique(sequences, w))
    if w.chance(0.5):
        sections.append("COMPARISON: " + w.pick(*COMPARISONS))
    if label == "normal":
        lines, impression = [], w.pick(*NORMAL_IMPRESSIONS)
        body = _normal_lines(w, seqs)
        if len(body) < 3:
            body = ["The brain parenchyma is normal in signal intensity."] + body
    else:
        maker = {"stroke": _stroke, "glioma": _glioma, "meningioma": _meningioma, "metastasis": _metastasis}[label]
        lines, impression = maker(findings, w, seqs)
        body = lines + _normal_lines(w, seqs, skip=SKIP_NORMAL[label])[-3:]
    sections.append("FINDINGS:\n" + " ".join(body))
    sections.append("IMPRESSION:\n" + _with_lead_in(impression, w))
    return w.spell("\n\n".join(sections))
