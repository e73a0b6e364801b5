from echodeploy.cli import app

app(prog_name="echodeploy")
