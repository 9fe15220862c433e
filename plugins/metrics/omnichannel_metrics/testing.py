"""Reading an exposition in tests: :class:`Scrape` parses ``/metrics`` with prometheus-client's parser.

::

    metrics = Scrape(exposition(service))      # or the text of GET /metrics
    assert metrics.at("messages_sent_total channel=whatsapp sender=106540352242922") == 12
    assert metrics.total("retries_total") == 3
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["Key", "Scrape", "sample_key"]

Key = tuple[str, tuple[tuple[str, str], ...]]
"""A sample: its name and its labels, sorted."""


def sample_key(name: str, **labels: str) -> Key:
    """The :data:`Key` of the sample ``name{labels}``."""
    return name, tuple(sorted(labels.items()))


class Scrape:
    """The samples of one exposition (``_created`` series left out).

    :param text: the exposition, Prometheus's text format.
    :param prefix: prepended (with ``_``) to the short names :meth:`at`, :meth:`total` and
        :meth:`by` take.
    """

    def __init__(self, text: str, prefix: str = "omnichannel") -> None:
        self.text = text
        self.prefix = prefix
        self.samples: dict[Key, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if not sample.name.endswith("_created"):
                    self.samples[sample_key(sample.name, **sample.labels)] = sample.value

    def get(self, name: str, **labels: str) -> float | None:
        """The value of the sample ``name{labels}`` (exactly those labels), ``None`` when absent."""
        return self.samples.get(sample_key(name, **labels))

    def key(self, spec: str) -> Key:
        """``"messages_sent_total channel=x sender=y"``: the key of ``<prefix>_messages_sent_total{...}``."""
        name, *labels = spec.split()
        return sample_key(f"{self.prefix}_{name}", **dict(label.split("=", 1) for label in labels))

    def at(self, spec: str) -> float | None:
        """The value of the sample :meth:`key` names, ``None`` when absent."""
        return self.samples.get(self.key(spec))

    def series(self, name: str) -> list[dict[str, str]]:
        """The label sets of every sample called ``name`` (the full name)."""
        return [dict(labels) for sample, labels in self.samples if sample == name]

    def total(self, short_name: str) -> float:
        """The sum of every series of ``<prefix>_<short_name>``."""
        name = f"{self.prefix}_{short_name}"
        return sum(value for (sample, _), value in self.samples.items() if sample == name)

    def by(self, short_name: str, label: str) -> dict[str, float]:
        """``<prefix>_<short_name>`` by the value of ``label``."""
        name = f"{self.prefix}_{short_name}"
        return {
            dict(labels)[label]: value for (sample, labels), value in self.samples.items() if sample == name
        }

    def label_values(self) -> set[str]:
        """Every label value of every sample."""
        return {value for _, labels in self.samples for _, value in labels}

    def moved_since(self, before: Scrape) -> dict[Key, float]:
        """Samples whose value changed since ``before`` (new ones count from 0); buckets left out."""
        moved = {}
        for key, value in self.samples.items():
            if key[0].endswith("_bucket"):
                continue
            delta = value - before.samples.get(key, 0.0)
            if delta:
                moved[key] = delta
        return moved
