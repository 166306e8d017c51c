"""The rendered AWS config/credentials pair, read back by botocore exactly as a node's SDK would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import botocore.session
import pytest

from mpicloud.errors import RenderError
from mpicloud.render.awsconfig import AccessKey, aws_files
from mpicloud.secret import Secret
from mpicloud.spec import spec_from_dict
from tests.specdata import aws_doc

KEY = AccessKey("AKIAEXAMPLEKEY000001", Secret("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"))
ROLE = "arn:aws:iam::111122223333:role/sim-data-access"


def _spec(cloud: str = "local", **bucket: Any) -> Any:
    doc = aws_doc if cloud == "aws" else (lambda **f: {"name": "cfd", "nodes": 2, "cloud": "local", **f})
    return spec_from_dict(doc(name="cfd", bucket={"name": "sim-data", "region": "eu-west-1", **bucket}))


def _botocore(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: str, creds: str | None) -> Any:
    (tmp_path / "config").write_text(config)
    (tmp_path / "credentials").write_text(creds or "")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    return botocore.session.Session(profile="mpicloud")


def test_iam_user_key_goes_to_credentials_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = aws_files(_spec(grant="iam_user", endpoint_url="http://127.0.0.1:5000"), KEY)
    assert files.credentials is not None and str(files.credentials) == "***"
    assert KEY.secret.reveal() not in files.config and KEY.key_id not in files.config
    session = _botocore(tmp_path, monkeypatch, files.config, files.credentials.reveal())
    creds = session.get_credentials()
    assert (creds.access_key, creds.secret_key) == (KEY.key_id, KEY.secret.reveal())
    profile = session.get_scoped_config()
    assert profile["region"] == "eu-west-1" and profile["endpoint_url"] == "http://127.0.0.1:5000"


def test_instance_role_needs_no_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = aws_files(_spec("aws"))
    assert files.credentials is None
    profile = _botocore(tmp_path, monkeypatch, files.config, None).get_scoped_config()
    assert profile == {"region": "eu-west-1"}


def test_cross_account_on_ec2_assumes_from_the_instance_role(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    files = aws_files(_spec("aws", grant="cross_account_role", role_arn=ROLE, external_id="ext-7f3a",
                            trusted_account_id="444455556666"))
    assert files.credentials is None
    profile = _botocore(tmp_path, monkeypatch, files.config, None).get_scoped_config()
    assert profile["role_arn"] == ROLE and profile["external_id"] == "ext-7f3a"
    assert profile["credential_source"] == "Ec2InstanceMetadata"   # no inline comment glued to the value
    assert profile["role_session_name"] == "mpicloud-cfd"


def test_cross_account_off_ec2_uses_a_base_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = aws_files(_spec(grant="cross_account_role", role_arn=ROLE, external_id="ext-7f3a",
                            trusted_account_id="444455556666"), KEY)
    assert files.credentials is not None
    session = _botocore(tmp_path, monkeypatch, files.config, files.credentials.reveal())
    assert session.get_scoped_config()["source_profile"] == "mpicloud-base"
    assert session.full_config["profiles"]["mpicloud-base"]["aws_access_key_id"] == KEY.key_id


@pytest.mark.parametrize(("bucket", "key", "message"), [
    ({"grant": "iam_user"}, None, "--access-key-id-env"),
    ({"grant": "cross_account_role", "external_id": "ext-7f3a", "trusted_account_id": "444455556666"},
     KEY, "bucket.role_arn"),
])
def test_missing_pieces_are_named(bucket: dict[str, str], key: AccessKey | None, message: str) -> None:
    with pytest.raises(RenderError, match=message.replace(".", r"\.")):
        aws_files(_spec(**bucket), key)


def test_no_bucket_section() -> None:
    with pytest.raises(RenderError, match="bucket"):
        aws_files(spec_from_dict({"name": "cfd", "nodes": 1, "cloud": "local"}))
