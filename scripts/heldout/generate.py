#!/usr/bin/env python3
"""Writes the held-out set of the offline model gate (scripts/model_gate.py).

    python3 scripts/heldout/generate.py            # (re)write ranking.jsonl and messages.jsonl
    python3 scripts/heldout/generate.py --check    # exit 1 if the committed files differ

Python 3.11 standard library only; the output is byte-for-byte deterministic (a SplitMix64
generator, not `random`, whose algorithms may change between Python versions). See README.md
in this folder for what the two files hold and why they look the way they do.

The texts below were written for this set. `--check` also verifies that none of them occurs
in the integration-test fixtures and that no message is one the traffic tool produces.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
CATALOG_RS = REPO_ROOT / "tools" / "traffic" / "src" / "catalog.rs"
SEED = 20261207
CANDIDATES_PER_QUERY = 25
RELATED_PER_QUERY = 6

# ---------------------------------------------------------------------------------------------
# Ranking: a small catalogue of product titles, each with its product type and the attributes
# it has ("title | attribute attribute ..."). Types listed in RELATED are complements or
# near substitutes of each other.
# ---------------------------------------------------------------------------------------------

CATALOGUE: dict[str, list[str]] = {
    "hiking boots": [
        "Trailforge Women's Waterproof Mid Hiking Boots, Leather, Brown | women waterproof leather",
        "Kestrel Men's Waterproof Hiking Boots with Vibram Sole | men waterproof",
        "Summitline Women's Lightweight Hiking Boot, Breathable Mesh | women lightweight",
        "Trailforge Men's Leather Backpacking Boots, Wide Fit | men leather wide",
        "Kids' Waterproof Hiking Boots, Hook and Loop, Navy | kids waterproof",
        "Ridgeway Women's Insulated Waterproof Winter Hiking Boots, 200g | women insulated waterproof",
        "Men's Lightweight Hiking Boots, Non-Slip Trekking Shoes | men lightweight",
    ],
    "running shoes": [
        "Velocity Women's Road Running Shoes, Cushioned, White/Pink | women cushioned",
        "Velocity Men's Trail Running Shoes, Rock Plate, Grippy Outsole | men trail",
        "Stride Lab Women's Trail Running Shoes, Waterproof Membrane | women trail waterproof",
        "Stride Lab Men's Carbon Plate Racing Shoes | men racing",
        "Women's Wide Toe Box Running Sneakers, Zero Drop | women wide",
        "Men's Cushioned Road Running Shoes, Size 11, Black | men cushioned black",
        "Kids' Lightweight Running Sneakers, Slip-On | kids lightweight",
    ],
    "rain boots": [
        "Women's Tall Rubber Rain Boots, Matte Olive | women tall",
        "Kids' Rain Boots with Easy-On Handles, Dinosaur Print | kids",
        "Men's Chelsea Rain Boots, Waterproof Rubber, Ankle Height | men ankle",
        "Women's Short Rain Boots, Glossy Black | women ankle black",
        "Toddler Rain Boots, Yellow, Non-Slip Sole | kids yellow",
        "Women's Insulated Rain Boots with Removable Fleece Liner | women insulated",
    ],
    "slippers": [
        "Women's Memory Foam Slippers, Faux Fur Lined, Indoor/Outdoor Sole | women memoryfoam",
        "Men's Suede Moccasin Slippers, Sheepskin Lining | men suede",
        "Kids' Unicorn Slippers, Non-Slip | kids",
        "Women's Open Toe Spa Slippers, Washable | women",
        "Men's Memory Foam Clog Slippers, Grey | men memoryfoam grey",
        "Unisex Wool Felt Slippers, Handmade | wool",
    ],
    "rain jacket": [
        "Women's Packable Rain Jacket with Hood, Waterproof Breathable | women packable waterproof",
        "Men's Waterproof Rain Shell, 3-Layer, Pit Zips | men waterproof",
        "Kids' Lightweight Rain Jacket, Reflective Trim | kids lightweight",
        "Women's Long Raincoat, Trench Style, Belted | women long",
        "Men's Packable Windbreaker, Water Resistant | men packable",
        "Unisex Cycling Rain Jacket, High-Visibility Yellow | hivis",
    ],
    "down jacket": [
        "Women's Lightweight Packable Down Jacket, 650 Fill | women packable lightweight",
        "Men's Hooded Down Parka for Extreme Cold, -30°C | men parka hooded",
        "Kids' Hooded Puffer Jacket, Water-Repellent | kids hooded",
        "Women's Long Down Coat with Faux Fur Hood | women long hooded",
        "Men's Lightweight Down Jacket, Stand Collar, Black | men lightweight black",
        "Men's Recycled Down Puffer Jacket, Navy | men",
    ],
    "wool socks": [
        "Merino Wool Hiking Socks, Cushioned, 3 Pairs | merino hiking cushioned",
        "Women's Merino Wool Crew Socks, Lightweight, 4 Pack | women merino",
        "Men's Heavyweight Wool Boot Socks for Winter | men heavyweight",
        "Kids' Striped Wool Blend Socks, 6 Pairs | kids",
        "Merino Wool Running Socks, No-Show, Anti-Blister | merino running",
        "Over-the-Calf Ski Socks, Merino Wool Blend | merino ski",
    ],
    "leggings": [
        "Women's High-Waisted Yoga Leggings with Pockets, 7/8 Length | women highwaist pockets",
        "Women's Fleece-Lined Winter Leggings, Black | women fleece black",
        "Girls' Cotton Leggings, 3 Pack | kids cotton",
        "Women's Seamless Workout Leggings, Squat Proof | women seamless",
        "Maternity Yoga Pants, Over-the-Bump | women maternity",
        "Men's Compression Running Tights | men compression",
        "Women's High Rise Leggings with Side Pockets, Navy | women highwaist pockets",
    ],
    "swim trunks": [
        "Men's Quick-Dry Swim Trunks with Mesh Lining, 7 Inch | men quickdry",
        "Boys' Swim Shorts, UPF 50+, Shark Print | kids",
        "Men's Stretch Board Shorts, 9 Inch, Navy | men",
        "Men's Swim Trunks with Zipper Pocket, Floral | men pocket",
        "Men's Compression-Lined Swim Shorts, Quick Dry, 5 Inch | men quickdry",
        "Toddler Reusable Swim Diaper Trunks | kids",
    ],
    "baseball cap": [
        "Unisex Cotton Baseball Cap, Adjustable Strap, Washed Denim | cotton",
        "Lightweight Quick-Dry Running Cap, Reflective | running quickdry",
        "Kids' Adjustable Baseball Cap, Dinosaur Patch | kids",
        "Wool Blend Baseball Cap with Ear Flaps | wool winter",
        "Mesh Back Trucker Hat, Snapback | mesh",
    ],
    "wireless earbuds": [
        "Aurio True Wireless Earbuds with Active Noise Cancellation, 30h Battery | anc",
        "Aurio Sport Wireless Earbuds with Ear Hooks, IPX7 Sweatproof | sport waterproof",
        "Budget Bluetooth 5.3 Earbuds, USB-C Charging Case | budget usbc",
        "Open-Ear Wireless Earbuds for Running | sport openear",
        "Noise Cancelling Earbuds with Wireless Charging Case, Black | anc black",
        "Kids' Wireless Earbuds, Volume Limited to 85 dB | kids",
        "Lightweight Wireless Earbuds for Small Ears | small",
    ],
    "headphones": [
        "Sonavo Over-Ear Noise Cancelling Headphones, 40h Battery | anc wireless",
        "Closed-Back Studio Monitor Headphones, Wired | wired studio",
        "Kids' Over-Ear Headphones, Volume Limited, Foldable | kids",
        "Over-Ear Gaming Headset with Detachable Mic, RGB | gaming",
        "Sonavo Wireless Over-Ear Headphones, Foldable, Bluetooth 5.3 | wireless",
        "Open-Back Audiophile Headphones, Velour Pads, Wired | wired",
    ],
    "bluetooth speaker": [
        "Portable Bluetooth Speaker, Waterproof IP67, 20W | waterproof portable",
        "Boomcube Mini Bluetooth Speaker with Clip, Shower Proof | waterproof portable mini",
        "Party Speaker with Lights, 120W, Bluetooth | party",
        "Smart Speaker with Voice Assistant, Wi-Fi and Bluetooth | smart",
        "Rugged Outdoor Bluetooth Speaker, Floats, 24h Playtime | waterproof portable rugged",
        "Bluetooth Bookshelf Speakers, Pair, Optical Input | bookshelf",
    ],
    "usb-c charger": [
        "65W USB-C GaN Charger, 2 Ports, Foldable Plug | 65w",
        "20W USB-C Fast Charger for iPhone | 20w",
        "100W USB-C Laptop Charger, 4 Ports | 100w laptop",
        "45W Dual Port USB-C Car Charger | car",
        "30W Compact USB-C Wall Charger, White | 30w",
        "65W USB-C Laptop Charger with 2 m Cable | 65w laptop",
    ],
    "power bank": [
        "20000mAh Power Bank, USB-C PD 22.5W | 20000",
        "Slim 10000mAh Magnetic Wireless Portable Charger | 10000 magnetic",
        "25000mAh Laptop Power Bank, 100W USB-C | laptop 25000",
        "Rugged Solar Power Bank with Flashlight | solar",
        "Mini 5000mAh Power Bank, Lipstick Size | 5000",
        "27000mAh Power Bank for Laptops and Tablets, 140W | laptop",
    ],
    "phone case": [
        "Clear Case for iPhone 15, Anti-Yellowing, Shockproof | iphone15 clear",
        "Silicone Case for iPhone 15 with MagSafe, Midnight | iphone15 magsafe",
        "Rugged Armor Case for iPhone 15 Pro Max with Kickstand | iphone15pro",
        "Leather Wallet Case for Samsung Galaxy S24, Card Slots | galaxy wallet",
        "Leather Folio Case for iPhone 15 with Card Holder | iphone15 wallet",
        "Clear Case for Pixel 8 with Camera Protection | pixel clear",
    ],
    "laptop stand": [
        "Aluminium Laptop Stand, Adjustable Height, Ventilated | adjustable aluminium",
        "Foldable Portable Laptop Stand for Travel | foldable portable adjustable",
        "Vertical Laptop Stand, Dual Slot, Space-Saving | vertical",
        "Wooden Laptop Riser with Storage Drawer | wood",
        "Adjustable Lap Desk Laptop Stand for Bed and Sofa | adjustable bed",
    ],
    "webcam": [
        "1080p Webcam with Microphone and Privacy Cover | 1080p",
        "4K Webcam with Autofocus and Built-In Ring Light | 4k",
        "Wide-Angle Conference Webcam, 120 Degree, USB | wide",
        "720p Budget USB Webcam for Laptops | 720p",
        "60fps Streaming Webcam, 1080p | 1080p streaming",
    ],
    "mechanical keyboard": [
        "Compact 75% Mechanical Keyboard, Hot-Swappable, Brown Switches | compact hotswap",
        "Wireless Low Profile Mechanical Keyboard, Bluetooth | wireless lowprofile",
        "Full-Size Mechanical Gaming Keyboard, RGB, Red Switches | gaming",
        "60% Mechanical Keyboard, White PBT Keycaps | compact white",
        "Ergonomic Split Mechanical Keyboard | ergonomic",
        "Hot-Swap 65% Mechanical Keyboard Kit, Gasket Mount | compact hotswap",
    ],
    "wireless mouse": [
        "Ergonomic Vertical Wireless Mouse, Rechargeable | ergonomic rechargeable",
        "Silent Wireless Mouse, 2.4 GHz, Grey | silent grey",
        "Lightweight Wireless Gaming Mouse, 26K DPI | gaming",
        "Compact Bluetooth Travel Mouse, Multi-Device | compact",
        "Left-Handed Ergonomic Wireless Mouse | lefthanded ergonomic",
    ],
    "monitor": [
        "27-Inch 4K IPS Monitor, USB-C 65W, Height Adjustable | 27 4k usbc",
        "27-Inch QHD Gaming Monitor, 165Hz, 1ms | 27 gaming",
        "24-Inch Full HD Monitor, Eye Care, Thin Bezel | 24",
        "34-Inch Ultrawide Curved Monitor, 144Hz | 34 ultrawide",
        "15.6-Inch Portable USB-C Monitor | portable usbc",
        "32-Inch 4K Monitor for Photo Editing | 32 4k",
    ],
    "chef knife": [
        "8-Inch Chef's Knife, German Stainless Steel, Full Tang | stainless",
        "Japanese Gyuto Chef Knife 210 mm, Damascus Steel | japanese damascus",
        "Japanese Santoku Knife 7 Inch, Hollow Edge | japanese santoku",
        "6-Inch Ceramic Chef Knife, White Blade | ceramic",
        "Japanese Carbon Steel Petty Knife, 150 mm | small",
    ],
    "cast iron skillet": [
        "Pre-Seasoned 12-Inch Cast Iron Skillet with Helper Handle | 12inch",
        "10-Inch Cast Iron Skillet, Pre-Seasoned | 10inch",
        "Enamelled Cast Iron Skillet, 26 cm, Red | enamel",
        "Square Ridged Cast Iron Grill Pan | grill",
        "12-Inch Cast Iron Skillet with Lid, Dual Handle | 12inch lid",
    ],
    "frying pan": [
        "Nonstick Frying Pan 28 cm, PFOA-Free, Induction Compatible | nonstick induction",
        "Ceramic Nonstick Skillet Set, 8 and 10 Inch | nonstick ceramic",
        "Hard-Anodised Nonstick Fry Pan with Lid, 12 Inch | nonstick",
        "Tri-Ply Stainless Steel Frying Pan, Induction Ready, 10 Inch | stainless induction",
        "Carbon Steel Frying Pan, 11 Inch, Pre-Seasoned | carbonsteel induction",
        "Small Nonstick Egg Pan, 20 cm | nonstick small",
    ],
    "french press": [
        "French Press Coffee Maker, 1 Litre, Borosilicate Glass | glass",
        "Insulated Stainless Steel French Press, 34 oz | stainless insulated",
        "Travel French Press Mug, 350 ml | travel",
        "Small Glass French Press for One, 350 ml | glass small",
    ],
    "espresso machine": [
        "Semi-Automatic Espresso Machine with Milk Frother, 15 Bar | milkfrother",
        "Bean-to-Cup Fully Automatic Espresso Machine with Milk System | automatic milkfrother",
        "Portable Manual Lever Espresso Maker | manual portable",
        "Compact Capsule Espresso Machine | capsule compact",
        "Single Boiler Espresso Machine, 58 mm Portafilter | semiauto",
    ],
    "electric kettle": [
        "Electric Kettle 1.7 L, Stainless Steel, Auto Shut-Off | stainless",
        "Gooseneck Electric Kettle with Temperature Control | gooseneck temperature",
        "Glass Electric Kettle with LED Light, 1.8 L | glass",
        "Foldable Silicone Travel Kettle, 0.6 L | travel",
        "Variable Temperature Kettle with Keep Warm, 1.5 L | temperature stainless",
        "Matte Black Gooseneck Pour-Over Kettle, Electric | gooseneck black",
    ],
    "blender": [
        "High-Speed Countertop Blender, 1400W, 2 L Jar | countertop",
        "Personal Smoothie Blender with 2 To-Go Cups | personal",
        "Immersion Hand Blender, 5-Speed, with Whisk | immersion",
        "Cordless Portable Blender, USB-C Rechargeable | portable personal",
        "Professional Blender with Tamper, 64 oz | countertop",
    ],
    "air fryer": [
        "5.5 L Digital Air Fryer, 8 Presets | large",
        "Dual Basket Air Fryer, 8 Qt, Sync Finish | dual large",
        "Compact 2 L Air Fryer for One | compact",
        "12 L Air Fryer Oven with Rotisserie | oven large",
        "Dual Zone Air Fryer with Viewing Windows, 9 L | dual large",
    ],
    "food storage containers": [
        "Glass Meal Prep Containers with Lids, 10 Pack | glass",
        "BPA-Free Plastic Food Storage Set, 24 Pieces | plastic",
        "Leakproof Stainless Steel Lunch Box | stainless",
        "Oven Safe Glass Storage Containers with Snap Lids, 5 Pack | glass ovensafe",
        "Airtight Pantry Containers, 7 Pieces | airtight plastic",
    ],
    "pillow": [
        "Contour Memory Foam Pillow for Neck Pain | memoryfoam contour",
        "Down Alternative Pillows, Queen, Set of 2 | queen",
        "Shredded Memory Foam Pillow, Adjustable Loft | memoryfoam",
        "Cooling Gel Pillow for Hot Sleepers | cooling",
        "Goose Down Pillow, King, Medium Firm | king down",
        "Cervical Contour Pillow, Memory Foam, Side Sleeper | memoryfoam contour",
    ],
    "bed sheets": [
        "Queen Cotton Sheet Set, 400 Thread Count, Sateen | queen cotton",
        "King Bamboo Cooling Sheets, Deep Pocket | king bamboo",
        "Twin Flannel Sheet Set, Plaid | twin flannel",
        "Queen Stonewashed Linen Sheet Set | queen linen",
        "Full Microfiber Sheets, 4 Pieces, Grey | full microfiber",
        "Queen Organic Cotton Percale Sheets | queen cotton",
    ],
    "desk lamp": [
        "Dimmable LED Desk Lamp with USB Charging Port | led dimmable",
        "Swing Arm Architect Desk Lamp with Clamp | clamp",
        "LED Desk Lamp with Wireless Charger, Eye-Caring | led",
        "Brass Bankers Lamp with Green Glass Shade | vintage",
        "Rechargeable Clip-On Reading Lamp for Kids | kids clip",
        "Dimmable LED Task Lamp, 5 Colour Modes, Touch Control | led dimmable",
    ],
    "robot vacuum": [
        "Robot Vacuum with Self-Empty Base, Lidar Mapping | selfempty mapping",
        "Robot Vacuum and Mop Combo, App Control | mop",
        "Slim Robot Vacuum for Pet Hair, 2000 Pa Suction | pet",
        "Budget Robot Vacuum with Boundary Strips | budget",
        "Self-Emptying Robot Vacuum, Tangle-Free Brush for Pet Hair | pet selfempty",
    ],
    "bath towels": [
        "Turkish Cotton Bath Towels, Set of 4, White | cotton white",
        "Quick-Dry Microfiber Bath Towels, 2 Pack | microfiber",
        "Oversized Cotton Bath Sheet, Grey | cotton oversized",
        "Organic Cotton Towel Set, 6 Pieces, Sand | cotton organic",
        "Hooded Kids' Bath Towel with Animal Ears | kids",
        "Hotel Style White Cotton Bath Towels, 600 GSM, 2 Pack | cotton white",
    ],
    "yoga mat": [
        "Non-Slip Yoga Mat, 6 mm, with Carrying Strap | nonslip",
        "Extra Thick Exercise Mat, 15 mm, for Pilates | thick",
        "Natural Rubber Yoga Mat, 4 mm | rubber",
        "Foldable Travel Yoga Mat, 1.5 mm | travel",
        "Cork Yoga Mat, Non-Slip, Sweat-Proof | cork nonslip",
    ],
    "dumbbells": [
        "Adjustable Dumbbells, 2.5 to 24 kg, Pair | adjustable",
        "Neoprene Dumbbell Set, 3 Pairs, 1, 2 and 3 kg | neoprene",
        "Hex Rubber Dumbbell, Single, 10 kg | hex rubber",
        "Cast Iron Dumbbell Set with Rack | rack",
        "Quick-Select Adjustable Dumbbell, Single, up to 32 kg | adjustable",
    ],
    "camping tent": [
        "Ultralight 2-Person Backpacking Tent, Waterproof | 2person ultralight waterproof",
        "6-Person Family Camping Tent with Porch | family",
        "Instant Pop-Up Tent, 4 Person | popup",
        "Ultralight 1-Person Bivy Tent, 900 g | ultralight",
        "2-Person Dome Tent, Easy Setup, Budget | 2person",
    ],
    "sleeping bag": [
        "Down Mummy Sleeping Bag, -10°C Comfort | mummy down",
        "Lightweight Compact Summer Sleeping Bag | summer lightweight",
        "Kids' Sleeping Bag, Rocket Print | kids",
        "Rectangular Double Sleeping Bag for Two | double",
        "Synthetic Mummy Sleeping Bag, 0°C, Compression Sack | mummy synthetic",
    ],
    "water bottle": [
        "Insulated Stainless Steel Water Bottle, 1 Litre, Leakproof Lid | insulated 1l",
        "Kids' Water Bottle with Straw, 350 ml | kids straw",
        "Collapsible Silicone Travel Water Bottle | travel",
        "Glass Water Bottle with Bamboo Lid, 550 ml | glass",
        "Insulated Water Bottle with Straw Lid, 750 ml | insulated straw",
        "BPA-Free Sports Squeeze Bottle, 700 ml | sport",
    ],
    "bike helmet": [
        "Adult Road Bike Helmet with MIPS, Lightweight | adult road",
        "Kids' Bike Helmet with LED Rear Light | kids",
        "Urban Commuter Bike Helmet with Visor | adult commuter",
        "Full Face Mountain Bike Helmet | adult mtb",
        "Adjustable Toddler Bike Helmet, Ages 1 to 3 | kids",
    ],
    "jigsaw puzzle": [
        "1000 Piece Jigsaw Puzzle for Adults, Mountain Lake | 1000 adult",
        "500 Piece Jigsaw Puzzle, Vintage Map | 500 adult",
        "Kids' Floor Puzzle, 48 Pieces, Dinosaurs | kids",
        "Gradient Colour Challenge Puzzle, 1000 Pieces | 1000 adult",
        "Wooden Animal Shape Jigsaw Puzzle | wooden kids",
    ],
    "electric toothbrush": [
        "Rechargeable Sonic Electric Toothbrush, 5 Modes, Travel Case | sonic travel",
        "Kids' Electric Toothbrush with 2-Minute Timer | kids",
        "Oscillating Electric Toothbrush with Pressure Sensor | oscillating",
        "Sonic Toothbrush with Wireless Charging, 2 Pack | sonic",
        "Children's Sonic Toothbrush, Soft Bristles, Cartoon Handle | kids sonic",
    ],
    "hair dryer": [
        "Ionic Hair Dryer, 1875W, with Diffuser and Concentrator | ionic",
        "Foldable Dual Voltage Travel Hair Dryer | travel foldable",
        "Quiet Hair Dryer with Cold Shot, 1600W | quiet",
        "Wall-Mounted Hotel Hair Dryer | wallmounted",
        "Compact Travel Blow Dryer, 1200W, Folding Handle | travel foldable",
    ],
    "dog bed": [
        "Orthopedic Memory Foam Dog Bed, Large | large orthopedic",
        "Calming Donut Dog Bed, Medium, Faux Fur | medium calming",
        "Elevated Cooling Dog Cot for Outdoors | cooling",
        "Washable Small Dog Bed with Removable Cover | small washable",
        "Extra Large Bolster Dog Bed, Waterproof Liner | large",
    ],
    "backpack": [
        "Water-Resistant 15.6-Inch Laptop Backpack with USB Port | laptop",
        "Hiking Daypack, 25 L, with Rain Cover | hiking",
        "Kids' Reflective School Backpack | kids",
        "Anti-Theft Travel Backpack for 17-Inch Laptops | laptop antitheft",
        "Rolltop Waterproof Backpack, 20 L | waterproof",
    ],
    # Accessories and neighbours: no query of their own, related to the types above.
    "hiking accessories": [
        "Waterproofing Spray for Leather Boots, 300 ml | ",
        "Replacement Boot Laces, Round, 2 Pairs | ",
    ],
    "screen protector": ["Tempered Glass Screen Protector for iPhone 15, 2 Pack | iphone15"],
    "wireless charger": ["15W Qi Wireless Charging Pad | "],
    "charging cable": ["USB-C to USB-C Braided Cable, 2 m, 100W | "],
    "monitor arm": ["Single Monitor Arm, Gas Spring, Clamp Mount | "],
    "keycaps": ["PBT Keycap Set, 130 Keys, Cherry Profile | "],
    "mouse pad": ["Large Mouse Pad with Stitched Edges, 90 x 40 cm | "],
    "knife accessories": [
        "Whetstone Sharpening Kit, 1000/6000 Grit | ",
        "Extra Large Bamboo Cutting Board | ",
        "15-Piece Kitchen Knife Set with Block | ",
    ],
    "dutch oven": ["Cast Iron Dutch Oven, 5.5 Quart, Enamelled | "],
    "coffee gear": [
        "Burr Coffee Grinder with 40 Grind Settings | ",
        "Pour-Over Coffee Dripper with Glass Carafe | ",
        "Stovetop Espresso Maker, 6 Cup, Aluminium | ",
        "Handheld Rechargeable Milk Frother | ",
    ],
    "kitchen appliances": [
        "12-Cup Food Processor with Slicing Disc | ",
        "Stovetop Whistling Tea Kettle, Enamel | ",
    ],
    "air fryer accessories": [
        "Reusable Silicone Air Fryer Liners, 2 Pack | ",
        "Parchment Air Fryer Liners, 100 Pieces | ",
    ],
    "bedding": [
        "Silk Pillowcases, 2 Pack | ",
        "Queen Cotton Duvet Cover Set | queen cotton",
        "Waterproof Mattress Protector, Queen | queen",
    ],
    "lighting": ["Arc Floor Lamp with Marble Base | ", "LED Monitor Light Bar | "],
    "vacuum": ["Cordless Stick Vacuum, 40 Minute Runtime | ", "Replacement Brush and Filter Kit for Robot Vacuums | "],
    "bath": ["Non-Slip Memory Foam Bath Mat | ", "Unisex Waffle Weave Bathrobe | "],
    "fitness accessories": [
        "Yoga Block Set with Strap | ",
        "Cast Iron Kettlebell, 12 kg | ",
        "Resistance Bands Set, 5 Levels | ",
    ],
    "camping gear": [
        "Inflatable Camping Sleeping Pad | ",
        "Silk Sleeping Bag Liner | ",
        "Tent Footprint for 2-Person Tents | ",
        "Rechargeable LED Camping Lantern | ",
    ],
    "bike accessories": ["USB Rechargeable Bike Light Set | ", "U-Lock with Cable for Bikes | "],
    "puzzle accessories": ["Roll-Up Puzzle Mat for up to 1500 Pieces | "],
    "oral care": ["Replacement Toothbrush Heads, 8 Pack | ", "Cordless Water Flosser | "],
    "hair tools": ["Ceramic Plate Hair Straightener | ", "Hot Air Brush Volumiser | "],
    "pet supplies": ["Dog Crate Pad, 36 Inch | ", "Heated Cat Bed | "],
    "bags": ["Felt Laptop Sleeve, 14 Inch | ", "Packing Cubes, Set of 6 | "],
}

RELATED: dict[str, list[str]] = {
    "hiking boots": ["wool socks", "hiking accessories", "running shoes", "rain boots"],
    "running shoes": ["wool socks", "hiking boots"],
    "rain boots": ["rain jacket", "hiking boots"],
    "slippers": ["wool socks"],
    "rain jacket": ["down jacket", "rain boots"],
    "down jacket": ["rain jacket"],
    "wool socks": ["hiking boots"],
    "leggings": ["yoga mat"],
    "swim trunks": ["bath towels"],
    "baseball cap": [],
    "wireless earbuds": ["headphones"],
    "headphones": ["wireless earbuds"],
    "bluetooth speaker": [],
    "usb-c charger": ["charging cable", "wireless charger", "power bank"],
    "power bank": ["usb-c charger", "charging cable"],
    "phone case": ["screen protector", "wireless charger"],
    "laptop stand": ["monitor arm", "mechanical keyboard"],
    "webcam": ["lighting"],
    "mechanical keyboard": ["keycaps", "wireless mouse"],
    "wireless mouse": ["mouse pad", "mechanical keyboard"],
    "monitor": ["monitor arm"],
    "chef knife": ["knife accessories"],
    "cast iron skillet": ["frying pan", "dutch oven"],
    "frying pan": ["cast iron skillet"],
    "french press": ["coffee gear", "electric kettle"],
    "espresso machine": ["coffee gear"],
    "electric kettle": ["french press", "kitchen appliances"],
    "blender": ["kitchen appliances"],
    "air fryer": ["air fryer accessories"],
    "food storage containers": [],
    "pillow": ["bedding"],
    "bed sheets": ["bedding", "pillow"],
    "desk lamp": ["lighting"],
    "robot vacuum": ["vacuum"],
    "bath towels": ["bath"],
    "yoga mat": ["fitness accessories", "leggings"],
    "dumbbells": ["fitness accessories"],
    "camping tent": ["camping gear", "sleeping bag"],
    "sleeping bag": ["camping gear", "camping tent"],
    "water bottle": [],
    "bike helmet": ["bike accessories"],
    "jigsaw puzzle": ["puzzle accessories"],
    "electric toothbrush": ["oral care"],
    "hair dryer": ["hair tools"],
    "dog bed": ["pet supplies"],
    "backpack": ["bags"],
}

# (query, product type, attributes an exact match must have)
QUERIES: list[tuple[str, str, str]] = [
    ("womens waterproof hiking boots", "hiking boots", "women waterproof"),
    ("mens trail running shoes", "running shoes", "men trail"),
    ("rain boots for toddlers", "rain boots", "kids"),
    ("memory foam slippers women", "slippers", "women memoryfoam"),
    ("packable rain jacket for women", "rain jacket", "women packable"),
    ("men's hooded down parka", "down jacket", "men hooded"),
    ("merino hiking socks", "wool socks", "merino hiking"),
    ("high waisted leggings with pockets", "leggings", "highwaist pockets"),
    ("mens quick dry swim trunks", "swim trunks", "men quickdry"),
    ("noise cancelling earbuds", "wireless earbuds", "anc"),
    ("wired studio headphones", "headphones", "wired studio"),
    ("waterproof portable bluetooth speaker", "bluetooth speaker", "waterproof portable"),
    ("65w usb c charger", "usb-c charger", "65w"),
    ("power bank that can charge a laptop", "power bank", "laptop"),
    ("iphone 15 clear case", "phone case", "iphone15 clear"),
    ("adjustable aluminium laptop stand", "laptop stand", "adjustable aluminium"),
    ("4k webcam", "webcam", "4k"),
    ("hot swappable compact mechanical keyboard", "mechanical keyboard", "compact hotswap"),
    ("ergonomic wireless mouse", "wireless mouse", "ergonomic"),
    ("27 inch 4k monitor with usb-c", "monitor", "27 4k usbc"),
    ("japanese chef knife", "chef knife", "japanese"),
    ("12 inch cast iron skillet", "cast iron skillet", "12inch"),
    ("nonstick frying pan for induction hob", "frying pan", "nonstick induction"),
    ("glass french press", "french press", "glass"),
    ("espresso machine with milk frother", "espresso machine", "milkfrother"),
    ("gooseneck kettle with temperature control", "electric kettle", "gooseneck temperature"),
    ("personal smoothie blender", "blender", "personal"),
    ("dual basket air fryer", "air fryer", "dual"),
    ("glass meal prep containers", "food storage containers", "glass"),
    ("memory foam contour pillow", "pillow", "memoryfoam contour"),
    ("queen cotton sheets", "bed sheets", "queen cotton"),
    ("dimmable led desk lamp", "desk lamp", "led dimmable"),
    ("robot vacuum for pet hair", "robot vacuum", "pet"),
    ("white cotton bath towels", "bath towels", "cotton white"),
    ("non slip yoga mat", "yoga mat", "nonslip"),
    ("adjustable dumbbells", "dumbbells", "adjustable"),
    ("ultralight 2 person tent", "camping tent", "2person ultralight"),
    ("down mummy sleeping bag", "sleeping bag", "mummy down"),
    ("insulated water bottle 1 litre", "water bottle", "insulated 1l"),
    ("kids bike helmet", "bike helmet", "kids"),
    ("1000 piece puzzle for adults", "jigsaw puzzle", "1000 adult"),
    ("electric toothbrush for kids", "electric toothbrush", "kids"),
    ("travel hair dryer", "hair dryer", "travel"),
    ("large orthopedic dog bed", "dog bed", "large orthopedic"),
    ("anti theft laptop backpack", "backpack", "laptop antitheft"),
]

# ---------------------------------------------------------------------------------------------
# Classification: shoppers' messages. {p} is a product type of the demo shop's catalogue
# (read from tools/traffic/src/catalog.rs), {a} is "a", "an" or "a pair of" for it. Each template states
# the label it is meant to have; the generator checks it against the hidden purchase rule.
# ---------------------------------------------------------------------------------------------

BUYING_TEMPLATES = [
    "can i order {a} {p} and pick it up in store tomorrow",
    "what's the price on the {p} in grey",
    "do you ship the {p} to Canada",
    "is there a student discount on {a} {p}",
    "when will the {p} be back in stock",
    "I'd like to buy {a} {p} as a birthday present",
    "any black friday deal on {a} {p}?",
    "how much does it cost to ship {a} {p} overnight",
    "please add to cart one {p}, the bigger size",
    "checkout keeps failing with {a} {p} in my basket",
    "I'll order the {p} if it comes in blue",
    "can you price match {a} {p} from another store",
    "need {a} {p} by saturday, can you ship express",
    "going to buy the {p} you recommended, which colour is in stock",
    "cheapest {p} you have? want to buy today",
    "what's your best deal on {a} {p} with free returns",
    "reorder the same {p} as last time please",
    "is the {p} in stock at the downtown store",
    "put {a} {p} in my cart and take me to checkout",
    "{p} on sale? waiting for a discount before I buy",
    "How long does shipping take for the {p}?",
    "I want the {p}. what's the final price with tax",
    "do you offer a bulk order price for ten of the {p}",
    "Ship {a} {p} to my office address, paying by card",
]

BROWSING_TEMPLATES = [
    "what's the best way to store {a} {p}",
    "my {p} stopped working after a month",
    "is it safe to leave {a} {p} in a hot car",
    "the {p} I got last winter still looks new",
    "can {a} {p} be recycled",
    "tips for picking {a} {p} for a small flat",
    "what does the warranty on {a} {p} cover",
    "my dog chewed the {p}, any way to fix it",
    "is an expensive {p} really better than a cheap one",
    "how heavy is the {p}",
    "can i wash {a} {p} by hand",
    "read a review saying the {p} runs small, is that true",
    "what materials is the {p} made of",
    "do people really need {a} {p}",
    "got {a} {p} as a gift, how do I set it up",
    "return label for the {p} please",
    "which {p} is that in your newsletter photo",
    "how often should {a} {p} be replaced",
]

# A buying cue without a product type of the catalogue: label 0 under the rule.
CUE_ONLY = [
    "do you ship to Alaska or Hawaii",
    "where is my order? it's been ten days",
    "can I change the delivery address on my order",
    "is there a discount for first-time customers",
    "what's the price of a gift card",
    "checkout page shows an error on my phone",
    "I want to buy something for my mum, any suggestions",
    "any deals this weekend?",
    "how do I apply a discount code",
    "cancel my last order please",
    "I'd like to buy a gift voucher",
    "can you ship internationally",
    "price list for the spring collection",
    "what's in stock at the mall store",
    "my order arrived with a missing item",
    "do prices include VAT",
    "is free shipping available for members",
    "the checkout total looks wrong",
    "can I order by phone instead",
    "what deal do you have for teachers",
    "does the discount stack with the voucher",
    "when do you ship orders placed on sunday",
    "I want to buy the blue one from the homepage",
    "add to cart button is greyed out",
]

# Neither a cue nor a product type: label 0.
SMALL_TALK = [
    "hi, anyone there?",
    "thanks for the help!",
    "can I speak to a person",
    "what are your opening hours",
    "how do I reset my password",
    "love the new website design",
    "is the store open on sunday",
    "do you have a loyalty programme",
    "where can I find your returns policy",
    "just browsing, thanks",
    "what's your phone number",
    "how do I unsubscribe from the newsletter",
    "is there parking near the city centre store",
    "do you have a store in Leeds",
    "the app keeps logging me out",
    "good morning!",
]

NUM_BUYING = 150
NUM_BROWSING = 110


class SplitMix64:
    """The traffic tool's generator (tools/traffic/src/catalog.rs), so Python's `random` is not needed."""

    MASK = (1 << 64) - 1

    def __init__(self, seed: int) -> None:
        self.state = seed & self.MASK

    def next_u64(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & self.MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & self.MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & self.MASK
        return z ^ (z >> 31)

    def below(self, n: int) -> int:
        return self.next_u64() % n

    def shuffle(self, items: list) -> None:
        for i in range(len(items) - 1, 0, -1):
            j = self.below(i + 1)
            items[i], items[j] = items[j], items[i]


def rust_str_list(source: str, name: str) -> list[str]:
    """The string literals of `pub const NAME: &[&str] = &[ ... ];` in a Rust source file."""
    match = re.search(rf"pub const {name}: &\[&str\] = &\[(.*?)\];", source, re.S)
    if match is None:
        raise SystemExit(f"error: {CATALOG_RS} has no `{name}` list")
    return re.findall(r'"((?:[^"\\]|\\.)*)"', match.group(1))


def purchase_label(message: str, cues: list[str], products: list[str]) -> int:
    """The traffic tool's hidden purchase rule (`catalog::purchase_label`)."""
    text = message.lower()
    return int(any(c in text for c in cues) and any(p in text for p in products))


def parse_catalogue() -> dict[str, list[tuple[str, frozenset[str]]]]:
    out = {}
    for kind, lines in CATALOGUE.items():
        out[kind] = []
        for line in lines:
            title, _, tags = line.partition(" | ")
            out[kind].append((title.strip(), frozenset(tags.split())))
    return out


STOPWORDS = {"for", "with", "and", "the", "that", "can", "inch", "mens", "men", "women", "womens", "kids"}


def words(text: str) -> set[str]:
    """The content words of a text, lowercased (for lexical hard negatives)."""
    return {w for w in re.findall(r"[a-z0-9]+", text.lower().replace("'s", "")) if len(w) > 2} - STOPWORDS


def ranking_rows() -> list[dict]:
    """One row per query: the query and its candidates with graded relevance."""
    catalogue = parse_catalogue()
    ids = {}
    for kind, items in catalogue.items():
        for title, _ in items:
            if title in ids:
                raise SystemExit(f"error: duplicate title {title!r}")
            ids[title] = f"p{len(ids):03d}"
    for kind, related in RELATED.items():
        for other in related:
            if other not in catalogue:
                raise SystemExit(f"error: RELATED[{kind!r}] names unknown type {other!r}")

    rng = SplitMix64(SEED)
    rows = []
    for query, kind, attrs in QUERIES:
        wanted = frozenset(attrs.split())
        judged = [(title, 3 if wanted <= tags else 2) for title, tags in catalogue[kind]]
        related = [title for other in RELATED[kind] for title, _ in catalogue[other]]
        rng.shuffle(related)
        judged += [(title, 1) for title in related[:RELATED_PER_QUERY]]
        near = {kind, *RELATED[kind]}
        others = [title for other, items in catalogue.items() if other not in near for title, _ in items]
        rng.shuffle(others)
        # Half of the irrelevant candidates share a word with the query (a waterproof speaker
        # for "waterproof hiking boots"), as a lexical retriever's would; the rest are random.
        zeros = CANDIDATES_PER_QUERY - len(judged)
        lexical = [t for t in others if words(query) & words(t)][:zeros // 2]
        judged += [(title, 0) for title in lexical]
        judged += [(title, 0) for title in [t for t in others if t not in lexical][:zeros - len(lexical)]]
        rng.shuffle(judged)
        if not any(grade == 3 for _, grade in judged):
            raise SystemExit(f"error: query {query!r} has no exact match")
        rows.append({"query": query,
                     "candidates": [{"id": ids[t], "title": t, "relevance": g} for t, g in judged]})
    return rows


def article(product: str) -> str:
    """What goes before a product type in place of "a": "an", "a" or, for plurals, "a pair of"."""
    if product.endswith(("boots", "shoes", "headphones", "sunglasses")):
        return "a pair of"
    return "an" if product[0] in "aeiou" else "a"


def message_rows(products: list[str], cues: list[str]) -> list[dict]:
    """Shoppers' messages labelled by the hidden purchase rule; half of them with intent."""
    rng = SplitMix64(SEED + 1)
    combos = {
        1: list(itertools.product(BUYING_TEMPLATES, products)),
        0: list(itertools.product(BROWSING_TEMPLATES, products)),
    }
    texts: list[tuple[str, int]] = []
    for intended, count in ((1, NUM_BUYING), (0, NUM_BROWSING)):
        pool = combos[intended]
        rng.shuffle(pool)
        # Every template at least once, then the shuffled rest.
        templates = BUYING_TEMPLATES if intended else BROWSING_TEMPLATES
        first = [next(c for c in pool if c[0] == t) for t in templates]
        chosen = first + [c for c in pool if c not in first][:count - len(first)]
        texts += [(t.format(p=p, a=article(p)), intended) for t, p in chosen]
    texts += [(t, 0) for t in CUE_ONLY + SMALL_TALK]
    rng.shuffle(texts)

    rows = []
    for text, intended in texts:
        label = purchase_label(text, cues, products)
        if label != intended:
            raise SystemExit(f"error: {text!r} was written as label {intended} but the rule says {label}")
        rows.append({"text": text, "label": label})
    return rows


def traffic_messages(source: str) -> set[str]:
    """Every message the traffic tool can produce (its templates × products × brands)."""
    products, brands = rust_str_list(source, "PRODUCTS"), rust_str_list(source, "BRANDS")
    out = set()
    for name in ("BUYING", "BROWSING"):
        match = re.search(rf"const {name}: &\[&str\] = &\[(.*?)\];", source, re.S)
        for template in re.findall(r'"((?:[^"\\]|\\.)*)"', match.group(1)):
            for p, b in itertools.product(products, brands):
                out.add(template.replace("{p}", p).replace("{b}", b).lower())
    return out


def overlap_problems(ranking: list[dict], messages: list[dict], source: str) -> list[str]:
    """Texts of this set that also occur in the test fixtures or the traffic tool's output."""
    problems = []
    fixtures = " ".join(p.read_text(errors="replace").lower()
                        for p in (REPO_ROOT / "integration-tests").rglob("*") if p.is_file())
    texts = [r["query"] for r in ranking] + [c["title"] for r in ranking for c in r["candidates"]]
    texts += [m["text"] for m in messages]
    for text in sorted(set(texts)):
        if text.lower() in fixtures:
            problems.append(f"{text!r} occurs in integration-tests/")
    produced = traffic_messages(source)
    problems += [f"{m['text']!r} is a message the traffic tool produces"
                 for m in messages if m["text"].lower() in produced]
    return problems


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="do not write: exit 1 if the committed files differ from what would be written "
                             "or a text overlaps the test fixtures or the traffic tool's messages")
    args = parser.parse_args(argv)

    source = CATALOG_RS.read_text()
    products = rust_str_list(source, "PRODUCTS")
    cues = rust_str_list(source, "BUYING_CUES")
    ranking = ranking_rows()
    messages = message_rows(products, cues)
    files = {HERE / "ranking.jsonl": jsonl(ranking), HERE / "messages.jsonl": jsonl(messages)}

    if args.check:
        problems = [f"{path.name} is not what generate.py writes"
                    for path, text in files.items() if not path.is_file() or path.read_text() != text]
        problems += overlap_problems(ranking, messages, source)
        for problem in problems:
            print(f"heldout: {problem}", file=sys.stderr)
        if not problems:
            print(f"heldout: ok ({len(ranking)} queries, {len(messages)} messages)")
        return 1 if problems else 0

    for path, text in files.items():
        path.write_text(text)
    positives = sum(m["label"] for m in messages)
    print(f"wrote {len(ranking)} queries × {CANDIDATES_PER_QUERY} candidates and "
          f"{len(messages)} messages ({positives} with purchase intent)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
