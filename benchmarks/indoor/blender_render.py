"""Render one indoor benchmark scene with Blender's Cycles: the Blender half of ``benchmarks/indoor_scenes.py``.

    python benchmarks/indoor/blender_render.py SPEC.json OUT_DIR [--views train:0,1 test:3] [--seed N]

Runs in a Python that has the ``bpy`` package (Blender as a module, ``pip install 'osn-nerfstudio[blender]'``)
and imports nothing of the project, so that Blender's bundled libraries never share a process with torch.
``SPEC.json`` (written by ``indoor_scenes.py``) says everything: the room, static furniture, moving objects with
one world matrix per frame, cameras, lights, materials and render settings, all in metres, Blender's Z-up world.

For every view it writes ``OUT_DIR/<split>_<index>.png`` (the Cycles image, denoised) and
``OUT_DIR/<split>_<index>_depth.npy``: [K, H, W] float32 z-depth (metres) of each object rendered *alone* at
the pixel centre (object 0 = the room with its furniture; +inf where the object is missed). The visible depth
and label of a pixel are the minimum and argmin over objects, so labels, depth and amodal depth agree exactly.
``OUT_DIR/render_info.json`` records each object's mesh bounds and the time spent.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import bpy  # first: it makes Blender's own modules (bmesh, mathutils) importable

# isort: split
import bmesh
import numpy as np
from mathutils import Matrix

MISS_DEPTH = 1e9
"""Cycles writes about 1e10 for rays that hit nothing; anything beyond this is a miss."""


# ------------------------------------------------------------------------------------------------ materials


def _texture_coordinates(nodes):
    coords = nodes.new("ShaderNodeTexCoord")
    return coords.outputs["Object"]


def _colour_ramp(nodes, links, factor, colours):
    ramp = nodes.new("ShaderNodeValToRGB")
    ramp.color_ramp.elements[0].color = (*colours[0], 1.0)
    ramp.color_ramp.elements[1].color = (*colours[1], 1.0)
    links.new(factor, ramp.inputs["Fac"])
    return ramp.outputs["Color"]


def _grain(nodes, links, vector, colour, amount: float, scale: float):
    """``colour`` times (1 - amount/2 + amount * noise): fine surface grain of a given strength."""
    noise = nodes.new("ShaderNodeTexNoise")
    noise.inputs["Scale"].default_value = scale
    noise.inputs["Detail"].default_value = 6.0
    links.new(vector, noise.inputs["Vector"])
    remap = nodes.new("ShaderNodeMapRange")
    remap.inputs["To Min"].default_value = 1.0 - amount / 2
    remap.inputs["To Max"].default_value = 1.0 + amount / 2
    links.new(noise.outputs["Fac"], remap.inputs["Value"])
    mix = nodes.new("ShaderNodeMix")
    mix.data_type = "RGBA"
    mix.blend_type = "MULTIPLY"
    mix.inputs["Factor"].default_value = 1.0
    links.new(colour, mix.inputs[6])
    links.new(remap.outputs["Result"], mix.inputs[7])
    return mix.outputs[2]


def build_material(name: str, spec: dict) -> bpy.types.Material:
    """A Principled BSDF whose base colour is a procedural texture in object coordinates (it moves with the object)."""
    material = bpy.data.materials.new(name)
    material.use_nodes = True
    nodes, links = material.node_tree.nodes, material.node_tree.links
    bsdf = nodes["Principled BSDF"]
    bsdf.inputs["Roughness"].default_value = spec.get("roughness", 0.6)
    vector = _texture_coordinates(nodes)
    colours = [tuple(c) for c in spec["colours"]]
    kind = spec["type"]
    if kind == "checker":
        texture = nodes.new("ShaderNodeTexChecker")
        texture.inputs["Scale"].default_value = spec["scale"]
        texture.inputs["Color1"].default_value = (*colours[0], 1.0)
        texture.inputs["Color2"].default_value = (*colours[1], 1.0)
        links.new(vector, texture.inputs["Vector"])
        colour = texture.outputs["Color"]
    elif kind == "brick":
        texture = nodes.new("ShaderNodeTexBrick")
        texture.inputs["Scale"].default_value = spec["scale"]
        texture.inputs["Color1"].default_value = (*colours[0], 1.0)
        texture.inputs["Color2"].default_value = (*colours[1], 1.0)
        texture.inputs["Mortar"].default_value = (*spec.get("mortar", (0.8, 0.8, 0.78)), 1.0)
        links.new(vector, texture.inputs["Vector"])
        colour = texture.outputs["Color"]
    elif kind == "wave":
        texture = nodes.new("ShaderNodeTexWave")
        texture.inputs["Scale"].default_value = spec["scale"]
        texture.inputs["Distortion"].default_value = spec.get("distortion", 4.0)
        texture.inputs["Detail"].default_value = 3.0
        links.new(vector, texture.inputs["Vector"])
        colour = _colour_ramp(nodes, links, texture.outputs["Fac"], colours)
    elif kind == "noise":
        texture = nodes.new("ShaderNodeTexNoise")
        texture.inputs["Scale"].default_value = spec["scale"]
        texture.inputs["Detail"].default_value = 4.0
        links.new(vector, texture.inputs["Vector"])
        colour = _colour_ramp(nodes, links, texture.outputs["Fac"], colours)
    elif kind == "voronoi":
        texture = nodes.new("ShaderNodeTexVoronoi")
        texture.inputs["Scale"].default_value = spec["scale"]
        links.new(vector, texture.inputs["Vector"])
        colour = _colour_ramp(nodes, links, texture.outputs["Distance"], colours)
    elif kind == "flat":
        rgb = nodes.new("ShaderNodeRGB")
        rgb.outputs["Color"].default_value = (*colours[0], 1.0)
        colour = rgb.outputs["Color"]
    else:
        raise ValueError(f"material {name}: unknown texture type {kind!r}")
    if spec.get("grain", 0.0) > 0:
        colour = _grain(nodes, links, vector, colour, spec["grain"], spec.get("grain_scale", 40.0))
    links.new(colour, bsdf.inputs["Base Color"])
    return material


# ------------------------------------------------------------------------------------------------ geometry


def build_mesh(name: str, shape: str, size) -> bpy.types.Mesh:
    """A primitive scaled to full extents ``size`` (metres) about its centre, as a mesh with smooth normals where
    curved."""
    bm = bmesh.new()
    if shape == "box":
        bmesh.ops.create_cube(bm, size=1.0)
    elif shape == "sphere":
        bmesh.ops.create_uvsphere(bm, u_segments=48, v_segments=24, radius=0.5)
    elif shape == "cylinder":
        bmesh.ops.create_cone(bm, cap_ends=True, segments=48, radius1=0.5, radius2=0.5, depth=1.0)
    elif shape == "cone":
        bmesh.ops.create_cone(bm, cap_ends=True, segments=48, radius1=0.5, radius2=0.0, depth=1.0)
    elif shape == "monkey":
        bmesh.ops.create_monkey(bm)
        bmesh.ops.subdivide_edges(bm, edges=bm.edges[:], cuts=1, use_grid_fill=True, smooth=1.0)
        low = np.array([min(v.co[i] for v in bm.verts) for i in range(3)])
        high = np.array([max(v.co[i] for v in bm.verts) for i in range(3)])
        centre, extent = (low + high) / 2, high - low
        for v in bm.verts:
            v.co = [(v.co[i] - centre[i]) / extent[i] for i in range(3)]
    else:
        raise ValueError(f"object {name}: unknown shape {shape!r}")
    for v in bm.verts:
        v.co = [v.co[i] * size[i] for i in range(3)]
    mesh = bpy.data.meshes.new(name)
    bm.to_mesh(mesh)
    bm.free()
    smooth = shape in ("sphere", "cylinder", "cone", "monkey")
    for polygon in mesh.polygons:
        polygon.use_smooth = smooth and not (shape in ("cylinder", "cone") and len(polygon.vertices) > 4)
    return mesh


def add_object(name: str, shape: str, size, material, matrix) -> bpy.types.Object:
    obj = bpy.data.objects.new(name, build_mesh(name, shape, size))
    obj.data.materials.append(material)
    obj.matrix_world = Matrix(matrix)
    bpy.context.scene.collection.objects.link(obj)
    return obj


def mesh_bounds(obj) -> list:
    """[[min x, y, z], [max x, y, z]] of an object's vertices in its own (local) frame, metres."""
    points = np.array([v.co[:] for v in obj.data.vertices])
    return [points.min(0).tolist(), points.max(0).tolist()]


# ------------------------------------------------------------------------------------------------ scene


def reset_scene():
    bpy.ops.wm.read_factory_settings(use_empty=True)
    return bpy.context.scene


def configure_render(scene, spec: dict, threads: int) -> None:
    width, height = spec["resolution"]
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.render.resolution_x, scene.render.resolution_y = width, height
    scene.render.resolution_percentage = 100
    scene.render.pixel_aspect_x = scene.render.pixel_aspect_y = 1.0
    scene.render.threads_mode = "FIXED"
    scene.render.threads = threads
    scene.render.use_persistent_data = True
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGB"
    scene.render.image_settings.color_depth = "8"
    scene.view_settings.view_transform = "Standard"
    scene.view_settings.look = "None"
    scene.display_settings.display_device = "sRGB"
    cycles = scene.cycles
    cycles.max_bounces = spec.get("max_bounces", 4)
    cycles.diffuse_bounces = spec.get("diffuse_bounces", 3)
    cycles.glossy_bounces = 2
    cycles.transmission_bounces = cycles.volume_bounces = cycles.transparent_max_bounces = 0
    cycles.caustics_reflective = cycles.caustics_refractive = False
    cycles.sample_clamp_indirect = spec.get("clamp_indirect", 3.0)
    scene.view_layers[0].use_pass_z = True


def add_camera(scene, spec: dict):
    width, _ = spec["resolution"]
    data = bpy.data.cameras.new("camera")
    data.sensor_fit = "HORIZONTAL"
    data.sensor_width = 36.0
    data.lens = spec["fx"] * data.sensor_width / width
    data.clip_start, data.clip_end = 0.01, 1000.0
    camera = bpy.data.objects.new("camera", data)
    scene.collection.objects.link(camera)
    scene.camera = camera
    return camera


def add_lights(scene, lights) -> None:
    for i, light in enumerate(lights):
        data = bpy.data.lights.new(f"light{i}", light["type"])
        data.energy = light["energy"]
        data.color = light.get("colour", (1.0, 1.0, 1.0))
        if light["type"] == "AREA":
            data.shape = "RECTANGLE"
            data.size, data.size_y = light["size"]
        elif "radius" in light:
            data.shadow_soft_size = light["radius"]
        obj = bpy.data.objects.new(f"light{i}", data)
        obj.matrix_world = Matrix(light["matrix"])
        scene.collection.objects.link(obj)


def build_scene(spec: dict, threads: int):
    """The Blender scene of ``spec``: returns (scene, camera, [object k's Blender objects] for k = 0..K-1)."""
    scene = reset_scene()
    configure_render(scene, spec, threads)
    world = bpy.data.worlds.new("world")
    world.color = spec.get("world_colour", (0.05, 0.05, 0.05))
    scene.world = world
    materials = {name: build_material(name, m) for name, m in spec["materials"].items()}
    background = [
        add_object(f"room_{i}", part["shape"], part["size"], materials[part["material"]], part["matrix"])
        for i, part in enumerate(spec["background"])
    ]
    groups = [background]
    for obj in spec["objects"]:
        groups.append(
            [add_object(obj["name"], obj["shape"], obj["size"], materials[obj["material"]], obj["matrices"][0])]
        )
    add_lights(scene, spec["lights"])
    return scene, add_camera(scene, spec), groups


# ------------------------------------------------------------------------------------------------ rendering


def depth_output(scene, directory: Path):
    """A compositor that writes the z-depth pass as a 32-bit EXR into ``directory``; returns its File Output node."""
    scene.use_nodes = True
    tree = scene.node_tree
    for node in list(tree.nodes):
        tree.nodes.remove(node)
    layers = tree.nodes.new("CompositorNodeRLayers")
    composite = tree.nodes.new("CompositorNodeComposite")
    tree.links.new(layers.outputs["Image"], composite.inputs["Image"])
    output = tree.nodes.new("CompositorNodeOutputFile")
    output.base_path = str(directory)
    output.format.file_format = "OPEN_EXR"
    output.format.color_depth = "32"
    output.format.exr_codec = "ZIP"
    output.file_slots[0].path = "depth_"
    tree.links.new(layers.outputs["Depth"], output.inputs[0])
    return output


def read_exr(path: Path, width: int, height: int) -> np.ndarray:
    image = bpy.data.images.load(str(path))
    image.colorspace_settings.name = "Non-Color"
    pixels = np.empty(width * height * 4, dtype=np.float32)
    image.pixels.foreach_get(pixels)
    bpy.data.images.remove(image)
    # Blender stores rows bottom to top
    return pixels.reshape(height, width, 4)[::-1, :, 0].copy()


def set_quality(scene, spec: dict, rgb: bool, seed: int) -> None:
    cycles = scene.cycles
    cycles.seed = seed
    if rgb:
        cycles.samples = spec["rgb_samples"]
        cycles.use_adaptive_sampling = True
        cycles.adaptive_threshold = spec.get("adaptive_threshold", 0.01)
        cycles.use_denoising = True
        cycles.denoiser = "OPENIMAGEDENOISE"
        cycles.denoising_input_passes = "RGB_ALBEDO_NORMAL"
        cycles.pixel_filter_type = "BLACKMAN_HARRIS"
        cycles.filter_width = 1.5
    else:
        # one ray through each pixel's centre: exact per-pixel depth, no filtering across silhouettes
        cycles.samples = 1
        cycles.use_adaptive_sampling = False
        cycles.use_denoising = False
        cycles.pixel_filter_type = "BOX"
        cycles.filter_width = 0.01


def render_view(scene, camera, groups, spec: dict, view: dict, out: Path, scratch: Path, seed: int, depth_node) -> dict:
    """Render one view's image and every object's depth alone; returns seconds per part."""
    width, height = spec["resolution"]
    frame = view["frame"]
    camera.matrix_world = Matrix(view["camera"])
    for k, obj in enumerate(spec["objects"], start=1):
        groups[k][0].matrix_world = Matrix(obj["matrices"][frame])
    stem = out / view["name"]
    timings = {}
    start = time.perf_counter()
    if view.get("rgb", True):
        for group in groups:
            for obj in group:
                obj.hide_render = False
        set_quality(scene, spec, rgb=True, seed=seed)
        depth_node.mute = True
        scene.render.filepath = str(stem) + ".png"
        bpy.ops.render.render(write_still=True)
    timings["rgb"] = time.perf_counter() - start
    start = time.perf_counter()
    set_quality(scene, spec, rgb=False, seed=0)
    depth_node.mute = False
    depths = []
    for k in range(len(groups)):
        for j, group in enumerate(groups):
            for obj in group:
                obj.hide_render = j != k
        bpy.ops.render.render(write_still=False)
        path = scratch / f"depth_{scene.frame_current:04d}.exr"
        depth = read_exr(path, width, height)
        path.unlink()
        depths.append(np.where(depth > MISS_DEPTH, np.inf, depth))
    np.save(str(stem) + "_depth.npy", np.stack(depths).astype(np.float32))
    timings["depth"] = time.perf_counter() - start
    return timings


def main(argv=None) -> None:
    argv = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--views", nargs="*", help="names of the views to render (default: all)")
    parser.add_argument("--seed", type=int, default=None, help="Cycles seed (default: the spec's)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    spec = json.loads(args.spec.read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    seed = spec.get("seed", 0) if args.seed is None else args.seed
    views = [v for v in spec["views"] if args.views is None or v["name"] in args.views]
    start = time.perf_counter()
    scene, camera, groups = build_scene(spec, args.threads)
    info = {"bounds": [mesh_bounds(group[0]) for group in groups[1:]], "seconds": {}}
    with tempfile.TemporaryDirectory() as scratch:
        depth_node = depth_output(scene, Path(scratch))
        for i, view in enumerate(views):
            info["seconds"][view["name"]] = render_view(
                scene, camera, groups, spec, view, args.out, Path(scratch), seed, depth_node
            )
            print(f"rendered {view['name']} ({i + 1}/{len(views)})", flush=True)
    info["total_seconds"] = time.perf_counter() - start
    (args.out / "render_info.json").write_text(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
