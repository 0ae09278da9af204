"""Does every Helm hook find the ConfigMaps and Secrets it reads?

Helm runs pre-install hooks before it creates the release's ordinary objects, and pre-upgrade
and pre-rollback hooks before it updates them. A hook that reads a ConfigMap or Secret the
chart renders as an ordinary object therefore waits for one that does not exist (first
install) or reads the previous release's values (upgrade, rollback). It may read only:
  * objects the chart does not render (the user names them, e.g. an existingSecret), and
  * hooks of every phase it runs in, with a lower hook-weight (Helm creates hooks in weight
    order and waits for each).
Hooks of other phases (post-*, test) run after the release's objects exist and are not checked.

problems(docs) takes the rendered objects of one release and returns one line per violation.
"""

# The phases that run before the release's ordinary objects are created or updated.
EARLY_PHASES = {"pre-install", "pre-upgrade", "pre-rollback"}


def hook_phases(doc):
    annotations = (doc.get("metadata") or {}).get("annotations") or {}
    value = annotations.get("helm.sh/hook", "")
    return {p.strip() for p in value.split(",") if p.strip()}


def hook_weight(doc):
    annotations = (doc.get("metadata") or {}).get("annotations") or {}
    return int(annotations.get("helm.sh/hook-weight", "0"))


def pod_spec(doc):
    """The pod spec inside a workload, or None."""
    spec = doc.get("spec") or {}
    kind = doc.get("kind")
    if kind == "Pod":
        return spec
    if kind == "CronJob":
        spec = ((spec.get("jobTemplate") or {}).get("spec")) or {}
    return ((spec.get("template") or {}).get("spec")) or None


def references(spec):
    """(kind, name, where) for every ConfigMap and Secret a pod spec reads."""
    refs = []
    for v in spec.get("volumes") or []:
        where = f"volume {v.get('name')}"
        if "secret" in v:
            refs.append(("Secret", v["secret"].get("secretName"), where))
        if "configMap" in v:
            refs.append(("ConfigMap", v["configMap"].get("name"), where))
        # Volume plugins that log in with a Secret: csi's nodePublishSecretRef, the secretRef of
        # cephfs, rbd, flexVolume, iscsi, scaleIO, storageos; azureFile's secretName.
        for plugin, source in v.items():
            if not isinstance(source, dict):
                continue
            for field in ("nodePublishSecretRef", "secretRef"):
                if field in source:
                    refs.append(("Secret", source[field].get("name"), f"{where} ({plugin}.{field})"))
            if plugin == "azureFile":
                refs.append(("Secret", source.get("secretName"), f"{where} (azureFile)"))
        for source in (v.get("projected") or {}).get("sources") or []:
            if "secret" in source:
                refs.append(("Secret", source["secret"].get("name"), f"{where} (projected)"))
            if "configMap" in source:
                refs.append(("ConfigMap", source["configMap"].get("name"), f"{where} (projected)"))
    for s in spec.get("imagePullSecrets") or []:
        refs.append(("Secret", s.get("name"), "imagePullSecrets"))
    containers = [
        c
        for key in ("initContainers", "containers", "ephemeralContainers")
        for c in spec.get(key) or []
    ]
    for c in containers:
        for e in c.get("env") or []:
            source = e.get("valueFrom") or {}
            where = f"container {c.get('name')} env {e.get('name')}"
            if "secretKeyRef" in source:
                refs.append(("Secret", source["secretKeyRef"].get("name"), where))
            if "configMapKeyRef" in source:
                refs.append(("ConfigMap", source["configMapKeyRef"].get("name"), where))
        for e in c.get("envFrom") or []:
            where = f"container {c.get('name')} envFrom"
            if "secretRef" in e:
                refs.append(("Secret", e["secretRef"].get("name"), where))
            if "configMapRef" in e:
                refs.append(("ConfigMap", e["configMapRef"].get("name"), where))
    return refs


def problems(docs):
    rendered = {}
    for d in docs:
        if d.get("kind") in ("ConfigMap", "Secret"):
            rendered[(d["kind"], d["metadata"]["name"])] = d
    found = []
    for hook in docs:
        early = hook_phases(hook) & EARLY_PHASES
        spec = pod_spec(hook)
        if not early or spec is None:
            continue
        who = f"{hook['kind']} {hook['metadata']['name']} ({','.join(sorted(early))}, weight {hook_weight(hook)})"
        for kind, name, where in references(spec):
            target = rendered.get((kind, name))
            if target is None:
                continue  # not the chart's: a user-named object, which must exist beforehand
            phases = hook_phases(target)
            if not phases:
                found.append(f"{who} reads {kind} {name} ({where}), which is not a hook: "
                             "missing on first install, stale on upgrade")
            elif not early <= phases:
                found.append(f"{who} reads {kind} {name} ({where}), a hook only of "
                             f"{','.join(sorted(phases))}")
            elif hook_weight(target) >= hook_weight(hook):
                found.append(f"{who} reads {kind} {name} ({where}), a hook of weight "
                             f"{hook_weight(target)}, not created before it")
    return found
