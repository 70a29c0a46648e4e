from viadk8s.cli import app

app(prog_name="viadk8s")
